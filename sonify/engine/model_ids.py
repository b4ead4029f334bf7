"""The default pretrained models, named once: the pipeline's `models.*` defaults, the trainer's and the
benchmarks' read them from here (pipelines/*.yaml may still name a model explicitly)."""

CLAP = "laion/clap-htsat-unfused"                 # audio and concept text embeddings (retrieval)
VLM = "llava-hf/llava-1.5-7b-hf"                  # concepts and captions from the image
AST = "MIT/ast-finetuned-audioset-10-10-0.4593"   # the mixture's time series (the DiT's condition)
PIXART = "PixArt-alpha/PixArt-XL-2-512x512"       # its VAE (latents) and its transformer (the DiT trained)
