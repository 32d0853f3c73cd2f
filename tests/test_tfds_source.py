"""TFDS array_record datasets prepared from the shared files read back identically, without TensorFlow."""
import sys

import pytest

from xalign_jax.evaluation import tasks, tfds_source


@pytest.mark.parametrize("task,language", [("xcopa", "zh"), ("xwinograd", "fr"), ("pawsx", "en")])
def test_prepared_dataset_round_trips(shared_data, tmp_path, task, language):
    tfds_source.prepare_task(task, language, shared_data, tmp_path)
    for part in tasks.parts(task):
        assert tfds_source.load_part(task, language, part, tmp_path) == tasks.load_part(task, language, part,
                                                                                         shared_data)
    assert "tensorflow" not in sys.modules


def test_missing_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no prepared TFDS dataset"):
        tfds_source.load_part("xcopa", "zh", "test", tmp_path)
