"""Few-shot examples: one real photograph and one generated stand-in from demo/, with worked answers."""

from functools import cache as memoize
from pathlib import Path

from defake_pipeline.imaging.encode import encode_image_file

DEMO = Path(__file__).resolve().parents[1] / "demo"

REAL_EXAMPLE = DEMO / "real" / "coffee.jpg"
REAL_ANSWER = (
    "A cup of coffee on a saucer, seen from above on a wooden table. The foam pattern is irregular, the "
    "light falls from one side and the shadow of the cup agrees with it, the wood grain is uneven and the "
    "edges soften with the lens's depth of field. Nothing is fused or duplicated. This is a photograph: real."
)
FAKE_EXAMPLE = DEMO / "fake" / "standin_00.png"
FAKE_ANSWER = (
    "Soft coloured shapes over a smooth gradient. There is no sensor noise, no lens blur that depends on "
    "depth, and the edges are airbrushed evenly everywhere; no physical scene or light source explains "
    "what is shown. This image was made by software: generated."
)


@memoize
def _examples() -> tuple[str, str]:
    return encode_image_file(REAL_EXAMPLE), encode_image_file(FAKE_EXAMPLE)


def v1(cache: dict) -> None:
    """Real example first, then the generated one (the seed's two_shot.v1 variables)."""
    real_url, fake_url = _examples()
    cache["few_shot_image_url_0"], cache["few_shot_result_0"] = real_url, REAL_ANSWER
    cache["few_shot_image_url_1"], cache["few_shot_result_1"] = fake_url, FAKE_ANSWER
