"""Decoding and measuring media. The file extensions read as audio and as images are defined here once:
the listing stages' defaults (`stages.audio.extensions`, `stages.images.extensions`), the recipes and the
studies use them."""

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
