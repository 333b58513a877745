"""Shared tiny-model fixtures (CPU, float32), module-scoped because building a tiny pipeline takes ~1 s."""
import warnings

import pytest

warnings.filterwarnings("ignore", message=".*torchvision.*")



@pytest.fixture(scope="module")
def pmcond_pipe():
    from k4d_worldmodel.tiny import build_tiny_pipeline

    return build_tiny_pipeline("pmcond", seed=0)


@pytest.fixture(scope="module")
def full_pipe():
    from k4d_worldmodel.tiny import build_tiny_pipeline

    return build_tiny_pipeline("full", seed=1)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, pmcond_pipe):
    """The tiny pmcond pipeline saved with save_pretrained (a checkpoint folder the engine and node load)."""
    path = tmp_path_factory.mktemp("wm") / "tiny_model"
    pmcond_pipe.save_pretrained(path)
    return path
