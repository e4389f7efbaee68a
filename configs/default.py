"""Every field of every config, set to the seeds' recipes: the Keras example "When Recurrence
meets Transformers" (TLB on CIFAR-10) for training and the TLB, the Keras example "Image
classification with Perceiver" for the Perceiver's section.

The other configs start from this file and change what their recipe needs. Every field can be
overridden on the command line, e.g. `--config.batch_size=256`, and `--config.model=vit` or
`perceiver` trains that model's section on any config.
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
      variant='paper',           # blocks: 'paper', or 'keras_seed': exactly the Keras seed's
                                 # model (its weights port by name: tlb_jax/keras_port.py)
      keras_fans='conv',         # 'keras_seed' only: its attention kernels' glorot init with
                                 # fans as the Keras of the example's logs counted them;
                                 # 'einsum': as Keras does since April 2026
      scan_unroll=1,             # chunks per compiled loop iteration
      remat='dots',              # backward recomputes all but projections ('none',
                                 # 'dots_activations', 'full')
  ))
  # A ViT of about the TLB's parameter count: the same patch embedding and block type, 7 blocks
  # over all tokens (the TLB has 4 self-attention + 2 cross-attention + 1 slow-update blocks).
  config.vit = ml_collections.ConfigDict(dict(
      patch_size=4,
      tokenizer='linear',
      embed_dim=64,
      num_layers=7,
      num_heads=1,
      mlp_ratio=4,
      dropout_rate=0.2,
      attention_dropout_rate=0.2,
  ))
  # The Perceiver of the Keras example: 2x2 patches, a 256 x 256 latent array, a single-head
  # cross-attention and a tower of 4 eight-head self-attention blocks, run twice with shared
  # weights; every head has 256 features (Keras `key_dim=projection_dim`).
  config.perceiver = ml_collections.ConfigDict(dict(
      patch_size=2,
      tokenizer='linear',        # seed; 'stem' or 'conv' as for the TLB
      embed_dim=256,             # seed projection_dim
      num_latents=256,           # seed latent_dim
      num_layers=4,              # seed num_transformer_blocks
      num_iterations=2,          # cross-attention + tower repeats, weights shared
      num_heads=8,
      cross_attention_heads=1,
      head_dim=256,              # features per head in every attention
      mlp_ratio=1,               # seed ffn_units = [projection_dim, projection_dim]
      dropout_rate=0.2,
      attention_dropout_rate=0.1,
  ))
  config.dtype = 'auto'          # bfloat16 on GPU/TPU, float32 on CPU

  # Data.
  config.dataset = 'cifar10'
  config.data_dir = ml_collections.config_dict.placeholder(str)  # TFDS data dir (None: TFDS's
                                 # default, ~/tensorflow_datasets; downloads what is missing)
  config.train_split = 'train[:40000]'  # TFDS split strings; 'train[:40000]@official' slices
                                 # in the original files' order (Keras' load_data)
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
  config.microbatch_size = 0     # > 0: accumulate each device's gradient over micro-batches of
                                 # this many images (same update, the memory of one of them)
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
  config.adam_eps = 1e-8           # optax's default; Keras AdamW's is 1e-7 (cifar10_seed.py)
  config.adam_eps_placement = 'optax'  # eps added to sqrt(v_hat); 'keras': to sqrt(v) before
                                   # the bias correction, as Keras's Adam(W) does (an eps
                                   # 1/sqrt(1 - adam_b2^t) times larger at step t)
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
