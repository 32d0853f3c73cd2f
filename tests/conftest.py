"""Test-wide environment: offline hub, 8 fake CPU devices, quiet torch threads, one compilation cache.

Set before jax/torch/transformers are imported anywhere in the test session.

Many tests build the same train step or scoring program again (a straight and a resumed run, two meshes' worth of
the same model): they share a persistent compilation cache for the session, in a fresh temporary directory, so an
identical program (same HLO, devices and options) is loaded instead of compiled. A load is the same executable, so
no result changes; it halves the trainer tests' time. It is set in this process only: each parallel worker has its
own, and subprocesses that a test starts (other process counts, their own cache settings) do not inherit it.
"""
import atexit
import os
import shutil
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pathlib  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402

SESSION_XLA_CACHE = tempfile.mkdtemp(prefix="xalign-tests-xla-")
atexit.register(shutil.rmtree, SESSION_XLA_CACHE, ignore_errors=True)
jax.config.update("jax_compilation_cache_dir", SESSION_XLA_CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def session_wide_dir(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """The test session's temporary directory, which its parallel workers share (pytest-xdist gives each worker
    its own directory under it): what is built there, such as the converted wheel models, is built once per session
    rather than once per worker. Writers must not race (``fetch.fetch`` takes a lock)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    """The real evaluation/parallel data shipped beside the repository (never copied into it)."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"shared data directory not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="module")
def gguf_parsed_once_per_file():
    """transformers parses a GGUF file anew for its config, for its weights and for its tokenizer (our conversion
    builds the tokenizer with it too), and ``gguf.GGUFReader`` takes ~9 s over Gemma-3's 262k-entry vocabulary.
    The reference's readers of one unchanged file are shared (same path, size and modification time) for one test
    module: a reader of Gemma's file holds ~0.7 GiB."""
    import gguf
    readers, parse = {}, gguf.GGUFReader

    def shared_reader(path, mode="r"):
        if mode != "r":
            return parse(path, mode)
        status = pathlib.Path(path).stat()
        key = (str(pathlib.Path(path).resolve()), status.st_size, status.st_mtime_ns)
        if key not in readers:
            readers[key] = parse(path, mode)
        return readers[key]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gguf, "GGUFReader", shared_reader)
        yield


@pytest.fixture(scope="module", params=("gemma3-270m", "smollm2-135m"))
def real(request, tmp_path_factory, gguf_parsed_once_per_file):
    """One real wheel model (``tests.test_gguf.RealModel``: its fetched directory, GGUF file and transformers'
    GGUF-loaded reference), for each test module that asks for it."""
    from tests.test_gguf import RealModel
    return RealModel(tmp_path_factory, request.param)
