from __future__ import annotations

import numpy as np

from agent.core.superimage import Tiler, fit_square, still_shot


def _photo(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (300, 400, 3), dtype=np.uint8)


def test_still_shot_is_what_the_tiler_makes_of_a_still_scene() -> None:
    photo = _photo()
    for grid in (1, 2, 3, 4):
        tiler = Tiler("s", grid=grid, size=224, period=0.5)
        si = None
        for k in range(grid * grid):
            si = tiler.push(k * 0.5, photo)
        assert si is not None
        shot = still_shot(photo, grid, 224)
        assert shot.shape == (224, 224, 3) and shot.dtype == np.uint8
        np.testing.assert_array_equal(shot, si.image)


def test_still_shot_at_grid_1_is_the_photo_fitted() -> None:
    photo = _photo(1)
    np.testing.assert_array_equal(still_shot(photo, 1, 128), fit_square(photo, 128))
