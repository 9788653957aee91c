"""Images: probing a dataset's files (``probe``), encoding a request's image (``encode``),
perturbing them (``perturb``)."""

import warnings

from PIL import Image

# The probe refuses an image over twice Pillow's MAX_IMAGE_PIXELS, where Pillow raises; between
# the two Pillow only warns, at every open. Every image read after its probe is one the probe
# accepted, so that warning would say nothing but break the progress bar: it is not shown.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
