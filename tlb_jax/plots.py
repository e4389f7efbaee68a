"""Pictures of a run: training curves, TLB slow-stream attention maps and confusion matrices.

Pure functions of arrays and dicts (plus `read_scalars`, which reads a workdir's TensorBoard
events). Figures are drawn with matplotlib's Agg canvas, without pyplot, so nothing depends on a
display or on global pyplot state, and every PNG has a fixed pixel size:

  curves:    CURVES_SIZE (width, height)
  attention: attention_grid_size(n): ATTENTION_CELL_SIZE per image (the image and its
             overlay), up to ATTENTION_COLUMNS images per row
"""

import glob
import math
import os
from collections.abc import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

DPI = 100
CURVES_SIZE = (1100, 420)         # pixels (width, height)
ATTENTION_CELL_SIZE = (320, 200)  # pixels per image (width, height): image, overlay, title
ATTENTION_TITLE_HEIGHT = 44       # pixels, two lines
ATTENTION_GAP = 6                 # pixels between and around the panels
ATTENTION_COLUMNS = 4
ATTENTION_CMAP = 'inferno'        # as the seed
ATTENTION_ALPHA = 0.6
CONFUSION_SIZE = (760, 820)        # pixels, up to 20 classes
CONFUSION_SIZE_MANY = (1500, 1500)  # pixels, more classes
CORRECT_COLOR, WRONG_COLOR = '#1a7f37', '#cf222e'


# ----------------------------------------------------------------------------- TensorBoard


def read_scalar_records(workdir: str) -> list[tuple[float, str, int, float]]:
  """Every scalar in `workdir`'s TensorBoard event files as (wall time in s, tag, step, value),
  in the order they were written (a resumed run adds one event file per start)."""
  # pylint: disable=g-import-not-at-top  (only this function needs TensorBoard)
  from tensorboard.backend.event_processing import event_file_loader
  from tensorboard.util import tensor_util

  records = []  # (wall_time, order, tag, step, value)
  for path in sorted(glob.glob(os.path.join(workdir, 'events.out.tfevents.*'))):
    for event in event_file_loader.EventFileLoader(path).Load():
      for value in event.summary.value:
        if value.HasField('simple_value'):
          number = value.simple_value
        elif (value.HasField('tensor') and
              value.metadata.plugin_data.plugin_name in ('scalars', '')):
          array = tensor_util.make_ndarray(value.tensor)
          if array.ndim != 0 or not np.issubdtype(array.dtype, np.number):
            continue
          number = array.item()
        else:
          continue
        records.append((event.wall_time, len(records), value.tag, int(event.step), float(number)))
  return [(wall_time, tag, step, number) for wall_time, _, tag, step, number in sorted(records)]


def read_scalars(workdir: str) -> dict[str, dict[int, float]]:
  """Every scalar in `workdir`'s TensorBoard event files: {tag: {step: value}}, steps sorted.

  A step logged twice (the steps a killed run logged after its last checkpoint are logged again
  after the resume) keeps the value written last.
  """
  scalars: dict[str, dict[int, float]] = {}
  for _, tag, step, number in read_scalar_records(workdir):
    scalars.setdefault(tag, {})[step] = number
  return {tag: dict(sorted(values.items())) for tag, values in sorted(scalars.items())}


def epoch_curves(scalars: dict[str, dict[int, float]]) -> dict[str, np.ndarray]:
  """Per-epoch train and validation loss and top-1 accuracy from `read_scalars` output.

  The trainer logs `train_*` averaged over the steps since its previous log, with `train_epoch`
  (= step / steps_per_epoch), and `eval_*` at epoch ends. A train point is the step-weighted
  mean of the logs within one epoch, placed at that epoch's last logged epoch value (a run that
  stops mid-epoch ends at a fractional epoch); an eval point is placed at its step's epoch.

  Returns:
    {'train_epoch', 'train_loss', 'train_accuracy', 'eval_epoch', 'eval_loss',
     'eval_accuracy'}, 1-D float arrays; empty where the run logged nothing.
  """
  epochs = scalars.get('train_epoch', {})
  losses, accuracies = scalars.get('train_loss', {}), scalars.get('train_accuracy', {})
  bins: dict[int, list[tuple[float, int, float, float]]] = {}  # epoch: [(x, steps, loss, acc)]
  previous = 0
  for step in sorted(set(epochs) & set(losses) & set(accuracies)):
    bins.setdefault(math.ceil(epochs[step] - 1e-9), []).append(
        (epochs[step], max(step - previous, 1), losses[step], accuracies[step]))
    previous = step
  train = []
  for _, points in sorted(bins.items()):
    x, weights, loss, accuracy = (np.array(column, np.float64) for column in zip(*points))
    train.append((x.max(), np.average(loss, weights=weights),
                  np.average(accuracy, weights=weights)))
  curves = {name: np.array([point[i] for point in train], np.float64)
            for i, name in enumerate(('train_epoch', 'train_loss', 'train_accuracy'))}

  steps_per_epoch = next((step / epoch for step, epoch in epochs.items() if epoch > 0), None)
  eval_losses, eval_accuracies = scalars.get('eval_loss', {}), scalars.get('eval_accuracy', {})
  eval_steps = sorted(set(eval_losses) & set(eval_accuracies)) if steps_per_epoch else []
  curves['eval_epoch'] = np.array([epochs.get(s, s / steps_per_epoch) for s in eval_steps],
                                  np.float64)
  curves['eval_loss'] = np.array([eval_losses[s] for s in eval_steps], np.float64)
  curves['eval_accuracy'] = np.array([eval_accuracies[s] for s in eval_steps], np.float64)
  return curves


# ----------------------------------------------------------------------------- figures


def _figure(size_px: tuple[int, int]) -> Figure:
  figure = Figure(figsize=(size_px[0] / DPI, size_px[1] / DPI), dpi=DPI)
  FigureCanvasAgg(figure)
  return figure


def render(figure: Figure) -> np.ndarray:
  """Draws `figure` -> uint8 RGB (height, width, 3), exactly figsize * DPI pixels."""
  figure.canvas.draw()
  return np.asarray(figure.canvas.buffer_rgba())[..., :3].copy()


def save_png(image: np.ndarray, path: str) -> None:
  """Writes a uint8 (H, W, 3) array as a PNG (atomically; creates the directory)."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + '.tmp'
  Image.fromarray(image).save(tmp, format='PNG')
  os.replace(tmp, path)


def format_test_accuracy(test_accuracy: float) -> str:
  """The curves' test line label: a percentage to two decimals, as results are reported, so
  0.8497 reads 84.97% and not a rounded 0.850."""
  return f'test {test_accuracy:.2%}'


def plot_curves(curves: dict[str, np.ndarray], title: str = '',
                test_accuracy: float | None = None) -> np.ndarray:
  """Loss and top-1 accuracy, train and validation, against epochs -> RGB image CURVES_SIZE."""
  figure = _figure(CURVES_SIZE)
  loss_axes, accuracy_axes = figure.subplots(1, 2)
  style = dict(marker='o', markersize=3, linewidth=1.5)
  for axes, metric, label in ((loss_axes, 'loss', 'loss'),
                              (accuracy_axes, 'accuracy', 'top-1 accuracy')):
    for split, name, color in (('train', 'train', 'tab:blue'),
                               ('eval', 'validation', 'tab:orange')):
      x, y = curves.get(f'{split}_epoch', []), curves.get(f'{split}_{metric}', [])
      if len(x):
        axes.plot(x, y, color=color, label=name, **style)
    axes.set_xlabel('epoch')
    axes.set_ylabel(label)
    axes.grid(True, alpha=0.3)
    axes.set_xlim(left=0)
  if test_accuracy is not None:
    accuracy_axes.axhline(test_accuracy, color='tab:green', linestyle='--', linewidth=1,
                          label=format_test_accuracy(test_accuracy))
  for axes in (loss_axes, accuracy_axes):
    if axes.get_legend_handles_labels()[0]:
      axes.legend(loc='best')
  loss_axes.set_title('loss')
  accuracy_axes.set_title('top-1 accuracy')
  if title:
    figure.suptitle(title)
  figure.tight_layout()
  return render(figure)


# ----------------------------------------------------------------------------- attention


def attention_maps(attention: np.ndarray, grid_shape: tuple[int, int]) -> np.ndarray:
  """Reduces TLB slow-stream attention to one weight per patch, as the seed does.

  Args:
    attention: (B, C, H, L, K) weights of the L slow-stream latents (queries) over the K tokens
      of each of the C chunks, per head H; each (L, K) row sums to 1 over K.
    grid_shape: (rows, cols) of the patch grid, rows * cols = C * K.

  Returns:
    (B, rows, cols): for every token, the max over latents of the attention it receives, then
    the mean over heads. Tokens are row-major patches and chunk c holds tokens c*K..c*K+K-1, so
    chunk-major concatenation followed by a row-major reshape lays them back on the grid.
  """
  attention = np.asarray(attention, dtype=np.float32)
  if attention.ndim != 5:
    raise ValueError(f'attention must be (B, C, H, L, K), got shape {attention.shape}')
  batch, chunks, _, _, chunk_size = attention.shape
  if grid_shape[0] * grid_shape[1] != chunks * chunk_size:
    raise ValueError(f'{chunks} chunks of {chunk_size} tokens do not fill a {grid_shape} grid')
  per_token = attention.max(axis=3).mean(axis=2)  # (B, C, K)
  return per_token.reshape(batch, *grid_shape)


def _bilinear_matrix(size_in: int, size_out: int) -> np.ndarray:
  """(size_out, size_in) weights of half-pixel-centre linear interpolation, edges clamped
  (what Keras' bilinear `UpSampling2D`, used by the seed, computes)."""
  centres = (np.arange(size_out) + 0.5) * size_in / size_out - 0.5
  return np.stack([np.interp(centres, np.arange(size_in), row) for row in np.eye(size_in)],
                  axis=1)


def upsample(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """Bilinear (B, rows, cols) -> (B, height, width)."""
  rows = _bilinear_matrix(maps.shape[1], size[0])
  cols = _bilinear_matrix(maps.shape[2], size[1])
  return np.einsum('hr,brc,wc->bhw', rows, maps, cols).astype(np.float32)


def attention_grid_size(num_images: int) -> tuple[int, int]:
  """Pixel (width, height) of `plot_attention_grid` for `num_images` images."""
  columns = min(num_images, ATTENTION_COLUMNS)
  rows = math.ceil(num_images / ATTENTION_COLUMNS)
  return columns * ATTENTION_CELL_SIZE[0], rows * ATTENTION_CELL_SIZE[1]


def plot_attention_grid(images: np.ndarray, maps: np.ndarray, titles: Sequence[str],
                        title_colors: Sequence[str] | None = None) -> np.ndarray:
  """Each image next to itself with its attention map overlaid (inferno, alpha 0.6, as the
  seed draws it), under its title, ATTENTION_COLUMNS pairs per row.

  Args:
    images: (N, height, width, 3) uint8 or float in [0, 1].
    maps: (N, height, width) (see `upsample`), or (N, rows, cols), stretched to the image.
    titles: one per image (may hold a newline).
    title_colors: matplotlib colours of the titles; black by default.

  Returns:
    uint8 RGB image of `attention_grid_size(N)` pixels.
  """
  images = np.asarray(images)
  if images.dtype != np.uint8:
    images = np.clip(images, 0.0, 1.0)
  num_images = len(images)
  if not num_images or len(maps) != num_images or len(titles) != num_images:
    raise ValueError(f'need as many maps and titles as images (>= 1), got {num_images} images, '
                     f'{len(maps)} maps, {len(titles)} titles')
  width, height = attention_grid_size(num_images)
  figure = _figure((width, height))
  cell_w, cell_h = ATTENTION_CELL_SIZE
  side = min((cell_w - 3 * ATTENTION_GAP) / 2, cell_h - ATTENTION_TITLE_HEIGHT - ATTENTION_GAP)
  for i in range(num_images):
    row, col = divmod(i, ATTENTION_COLUMNS)
    left = col * cell_w + (cell_w - 2 * side - ATTENTION_GAP) / 2
    bottom = height - (row + 1) * cell_h + ATTENTION_GAP
    for panel in range(2):
      axes = figure.add_axes(((left + panel * (side + ATTENTION_GAP)) / width, bottom / height,
                              side / width, side / height))
      shown = axes.imshow(images[i], interpolation='nearest')
      if panel:
        axes.imshow(maps[i], cmap=ATTENTION_CMAP, alpha=ATTENTION_ALPHA,
                    extent=shown.get_extent(), interpolation='bilinear')
      axes.set_axis_off()
    color = title_colors[i] if title_colors is not None else 'black'
    figure.text((col + 0.5) * cell_w / width, (bottom + side + 4) / height, titles[i],
                ha='center', va='bottom', fontsize=10, color=color)
  return render(figure)


def attention_titles(true_names: Sequence[str] | None, pred_names: Sequence[str],
                     pred_probs: Sequence[float]) -> tuple[list[str], list[str]]:
  """'true: cat / pred: dog 0.61' titles, green when right and red when wrong (black when the
  true class is unknown)."""
  titles, colors = [], []
  for i, (pred, prob) in enumerate(zip(pred_names, pred_probs)):
    if true_names is None:
      titles.append(f'pred: {pred} {prob:.2f}')
      colors.append('black')
    else:
      titles.append(f'true: {true_names[i]}\npred: {pred} {prob:.2f}')
      colors.append(CORRECT_COLOR if true_names[i] == pred else WRONG_COLOR)
  return titles, colors


# ----------------------------------------------------------------------------- comparison


RUN_LINE_STYLES = ('-', '--', ':', '-.')  # the runs of one group, in order


def run_line_styles(names: Sequence[str], groups: dict[str, str] | None = None
                    ) -> dict[str, tuple[str, str]]:
  """Each run's matplotlib (colour, line style). Runs of one group (one model trained with
  several seeds, say) share a colour, the first drawn solid and the next ones dashed, dotted,
  dash-dotted; a run without a group is a group of its own."""
  groups = groups or {}
  colour_of_group, runs_in_group, styles = {}, {}, {}
  for name in names:
    group = groups.get(name, name)
    colour_of_group.setdefault(group, f'C{len(colour_of_group) % 10}')
    index = runs_in_group[group] = runs_in_group.get(group, -1) + 1
    styles[name] = (colour_of_group[group], RUN_LINE_STYLES[index % len(RUN_LINE_STYLES)])
  return styles


def plot_runs(curves: dict[str, tuple[np.ndarray, np.ndarray]], title: str = '',
              xlabel: str = 'training minutes', groups: dict[str, str] | None = None
              ) -> np.ndarray:
  """Validation top-1 against training time, one line per run ({name: (x, top-1)}), x in
  minutes or as `xlabel` says -> RGB image CURVES_SIZE. Runs of one group ({name: group})
  share a colour (`run_line_styles`)."""
  figure = _figure(CURVES_SIZE)
  axes = figure.subplots()
  styles = run_line_styles(list(curves), groups)
  for name, (x, accuracy) in curves.items():
    colour, line_style = styles[name]
    axes.plot(x, accuracy, marker='o', markersize=3, linewidth=1.5, label=name, color=colour,
              linestyle=line_style)
  axes.set_xlabel(xlabel)
  axes.set_ylabel('validation top-1 accuracy')
  axes.grid(True, alpha=0.3)
  axes.set_xlim(left=0)
  if curves:
    axes.legend(loc='lower right')
  if title:
    axes.set_title(title)
  figure.tight_layout()
  return render(figure)


# ----------------------------------------------------------------------------- confusion


def row_normalised(confusion: np.ndarray) -> np.ndarray:
  """(K, K) counts, row the true class -> the fraction of each true class predicted as each
  class (a row without examples stays zero)."""
  totals = confusion.sum(axis=1, keepdims=True)
  return np.divide(confusion, totals, out=np.zeros(confusion.shape, np.float64),
                   where=totals > 0)


def confusion_order(num_classes: int, superclass_of_class: Sequence[int] | None) -> np.ndarray:
  """Class indices grouped by superclass (in class order within a group), or 0..K-1."""
  if superclass_of_class is None:
    return np.arange(num_classes)
  return np.argsort(np.asarray(superclass_of_class), kind='stable')


def plot_confusion(confusion: np.ndarray, class_names: Sequence[str],
                   superclass_of_class: Sequence[int] | None = None,
                   superclass_names: Sequence[str] | None = None,
                   title: str = '') -> np.ndarray:
  """Row-normalised confusion matrix (true class down, predicted class across) -> RGB image.

  With superclasses (CIFAR-100) the classes are grouped by superclass, white lines separate the
  groups and the superclass names label them on the right, so 100 classes stay readable; up to
  20 classes, each cell also prints its fraction.
  """
  num_classes = len(class_names)
  many = num_classes > 20
  order = confusion_order(num_classes, superclass_of_class)
  matrix = row_normalised(confusion)[np.ix_(order, order)]
  figure = _figure(CONFUSION_SIZE_MANY if many else CONFUSION_SIZE)
  axes = figure.subplots()
  shown = axes.imshow(matrix, cmap='viridis', vmin=0.0, vmax=1.0, interpolation='nearest')
  figure.colorbar(shown, ax=axes, orientation='horizontal', fraction=0.04, pad=0.12 if many
                  else 0.18, label='fraction of the true class')
  names = [class_names[i] for i in order]
  font = 4.5 if many else 9
  axes.set_xticks(range(num_classes), names, rotation=90, fontsize=font)
  axes.set_yticks(range(num_classes), names, fontsize=font)
  axes.set_xlabel('predicted class')
  axes.set_ylabel('true class')
  if not many:
    for i in range(num_classes):
      for j in range(num_classes):
        axes.text(j, i, f'{matrix[i, j]:.2f}', ha='center', va='center', fontsize=7,
                  color='black' if matrix[i, j] > 0.5 else 'white')
  if superclass_of_class is not None:
    groups = np.asarray(superclass_of_class)[order]
    starts = np.flatnonzero(np.diff(groups)) + 1
    for start in starts:
      axes.axhline(start - 0.5, color='white', linewidth=0.5)
      axes.axvline(start - 0.5, color='white', linewidth=0.5)
    if superclass_names is not None:
      edges = np.concatenate([[0], starts, [num_classes]])
      right = axes.secondary_yaxis('right')
      right.set_yticks([(a + b - 1) / 2 for a, b in zip(edges[:-1], edges[1:])],
                       [superclass_names[groups[a]] for a in edges[:-1]], fontsize=font + 1)
  if title:
    axes.set_title(title)
  figure.tight_layout()
  return render(figure)
