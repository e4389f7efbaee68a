"""Fields shared by every config, set to the seed's recipe (Keras "When Recurrence meets
Transformers": TLB on CIFAR-10, 48.9% validation accuracy after 30 epochs).

Every field can be overridden on the command line, e.g. `--config.batch_size=256`.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()

  # Model: `config.model` names the model; its hyper-parameters live in `config[config.model]`.
  config.model = 'tlb'
  config.tlb = ml_collections.ConfigDict(dict(
      patch_size=4,
      tokenizer='linear',        # seed; 'conv': CCT-style conv stages, 'stem': stride-2 conv
                                 # stem (both need a power-of-two patch_size)
      embed_dim=64,
      chunk_size=8,
      num_latents=8,             # seed: as many latents as tokens per chunk
      num_layers=4,              # self-attention blocks in the fast stream
      cross_attention_every=2,   # r
      num_heads=1,
      mlp_ratio=4,
      dropout_rate=0.2,
      attention_dropout_rate=0.2,
      slow_stream_init='zeros',  # seed; 'learned' trains the initial state
      head='fast_last_mean',     # seed; 'slow_mean' pools the final slow stream
      scan_unroll=1,             # chunks per compiled loop iteration
      remat='dots',              # backward recomputes all but projections ('none', 'full')
  ))
  config.dtype = 'auto'          # bfloat16 on GPU/TPU, float32 on CPU

  # Data.
  config.dataset = 'cifar10'
  config.data_dir = ml_collections.config_dict.placeholder(str)  # TFDS data dir
  config.download = False        # True: let TFDS download and prepare (needs a network)
  config.train_split = 'train[:40000]'
  config.eval_split = 'train[40000:]'  # validation: model selection only ('': none, final runs)
  config.test_split = 'test'           # evaluated once, at the end ('': none, for probes)
  config.resize_size = 52        # images are resized to this, then randomly cropped...
  config.image_size = 48         # ...to this for training; eval resizes straight to it
  config.crop_padding = 0        # > 0: pads the resize by this many pixels (reflect) before
                                 # the crop: "random crop with padding" (eval crops share it)
  config.random_flip = True
  config.mixup_alpha = 0.0       # > 0: mixup with Beta(alpha, alpha) weights (on device)
  config.cutmix_alpha = 0.0      # > 0: CutMix; with both > 0, each batch uses one of them
  config.eval_resize_size = 0    # eval resizes to this, then crops image_size (0: image_size)
  config.test_time_augmentation = 'none'  # final val/test, --mode=eval/predict: 'flip' averages
                                 # 2 views, 'crops_flip' 10 (5 crops of eval_resize_size, flipped)

  # Optimization: AdamW.
  config.seed = 42
  config.batch_size = 2048
  config.eval_batch_size = 2048
  config.num_epochs = 30
  config.num_train_steps = -1    # > 0 overrides num_epochs
  config.learning_rate = 1e-4
  config.lr_schedule = 'constant'  # or 'warmup_cosine'
  config.warmup_epochs = 0.0
  config.min_learning_rate = 0.0
  config.weight_decay = 1e-4
  config.weight_decay_on = 'all'   # Keras AdamW decays everything; 'kernels' skips biases/norms
  config.adam_b1 = 0.9
  config.adam_b2 = 0.999
  config.grad_clip_norm = 0.0      # 0 disables clipping
  config.label_smoothing = 0.0
  config.skip_nonfinite_steps = False  # True: a NaN/inf step leaves the state unchanged

  # Loop.
  config.log_every_steps = 50
  config.eval_every_epochs = 1     # 0: only at the end
  config.checkpoint_every_steps = 500  # and at every epoch end
  config.keep_checkpoints = 3

  # Pictures (workdir/plots/): attention maps of this many test images at the end (TLB; 0: none).
  config.num_attention_images = 8
  return config
