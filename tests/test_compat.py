"""Every upstream internal `common.compat` relies on, checked by name against the installed releases.

Each test fails, naming the internal, when a release removes, renames or rewords it; `make test-latest` runs them
against the newest releases of the Hugging Face stack.
"""

from __future__ import annotations

import inspect
import logging

import pytest
import torch

from common import compat


def test_torch_save_still_reports_a_failed_write_in_the_words_compat_looks_for(tmp_path):
    """torch.save gives no errno when the disk is full; /dev/full fails every write with ENOSPC."""
    with pytest.raises(RuntimeError) as error:
        torch.save(torch.zeros(1000), "/dev/full")
    assert any(text in str(error.value) for text in compat.TORCH_WRITE_FAILURE_MESSAGES), (
        f"TORCH_WRITE_FAILURE_MESSAGES: torch now says {str(error.value)[:200]!r}"
    )


def test_accelerate_still_warns_about_shared_tensors_in_the_words_compat_drops(caplog):
    from accelerate import PartialState
    from accelerate.utils.other import clean_state_dict_for_safetensors

    PartialState(cpu=True)  # accelerate's logger needs its state
    logger_name, text = compat.ACCELERATE_SHARED_TENSOR
    logger = logging.getLogger(logger_name)
    filters, logger.filters = logger.filters, []  # train.loop drops the warning where it is imported
    shared = torch.zeros(4)
    try:
        with caplog.at_level(logging.WARNING, logger=logger_name):
            clean_state_dict_for_safetensors({"a": shared, "b": shared})
    finally:
        logger.filters = filters
    assert any(text in record.getMessage() and record.name == logger_name for record in caplog.records), (
        f"ACCELERATE_SHARED_TENSOR: accelerate logged {[(r.name, r.getMessage()) for r in caplog.records]}"
    )


def test_drop_log_messages_drops_only_the_records_that_hold_a_text(caplog):
    logger = logging.getLogger("gptscratch-compat-test")
    quiet = compat.drop_log_messages(logger.name, "noise")
    try:
        with caplog.at_level(logging.WARNING, logger=logger.name):
            logger.warning("[RANK 0] some noise here")
            logger.warning("a real problem")
    finally:
        logger.removeFilter(quiet)
    assert [record.getMessage() for record in caplog.records] == ["a real problem"]


def test_deepspeed_still_announces_its_cpu_fallback_in_the_words_compat_drops():
    """The notice is logged at import, before a test could catch it: its words are checked in DeepSpeed's source,
    and a fresh command prints nothing of it."""
    real_accelerator = pytest.importorskip("deepspeed.accelerator.real_accelerator")
    logger_name, text = compat.DEEPSPEED_CPU_NOTICE
    assert text in inspect.getsource(real_accelerator), f"DEEPSPEED_CPU_NOTICE: DeepSpeed no longer says {text!r}"
    from deepspeed.utils import logger

    assert logger.name == logger_name, f"DEEPSPEED_CPU_NOTICE: DeepSpeed's logger is {logger.name!r} now"


def test_lm_evals_hflm_still_warns_in_the_words_compat_drops():
    lm_eval_huggingface = pytest.importorskip("lm_eval.models.huggingface")
    assert compat.HFLM_LOGGER == lm_eval_huggingface.__name__
    source = inspect.getsource(lm_eval_huggingface)
    for text in compat.HFLM_MODEL_OBJECT_WARNINGS:
        assert text in source, f"HFLM_MODEL_OBJECT_WARNINGS: lm-eval no longer says {text!r}"


def test_parse_size_is_the_parser_save_pretrained_uses():
    """transformers hands max_shard_size to huggingface_hub's parser, whose units are powers of ten."""
    assert compat.parse_size("2GB") == 2 * 10**9
    assert compat.parse_size("500MB") == 500 * 10**6
    with pytest.raises(ValueError):
        compat.parse_size("lots")


def test_dataset_fingerprint_changes_with_the_rows():
    import datasets

    first = datasets.Dataset.from_dict({"text": ["a", "b"]})
    second = datasets.Dataset.from_dict({"text": ["a", "c"]})
    assert isinstance(compat.dataset_fingerprint(first), str)
    assert compat.dataset_fingerprint(first) != compat.dataset_fingerprint(second)


def test_muon_orthogonalises_through_the_function_compat_swaps():
    """torch.optim.Muon calls the module-level `_zeropower_via_newtonschulz(grad, ns_coefficients, ns_steps, eps)`
    at every step; inside `muon_orthogonalization` it calls ours instead, and outside it torch's own again."""
    import torch.optim._muon as torch_muon

    parameters = inspect.signature(torch_muon._zeropower_via_newtonschulz).parameters
    assert list(parameters)[:4] == ["grad", "ns_coefficients", "ns_steps", "eps"], (
        f"muon_orthogonalization: torch's function now takes {list(parameters)}"
    )
    calls = []

    def spy(grad, ns_coefficients, ns_steps, eps):
        calls.append(grad.shape)
        return torch.zeros_like(grad)

    weight = torch.nn.Parameter(torch.ones(3, 4))
    optimizer = torch.optim.Muon([weight], lr=0.1, weight_decay=0.0, adjust_lr_fn="match_rms_adamw")
    weight.grad = torch.randn(3, 4)
    with compat.muon_orthogonalization(spy):
        optimizer.step()
    assert calls == [torch.Size([3, 4])], "muon_orthogonalization: Muon no longer calls _zeropower_via_newtonschulz"
    assert torch.equal(weight.detach(), torch.ones(3, 4))  # the spy's zero update, not torch's
    assert torch_muon._zeropower_via_newtonschulz is not spy


def test_the_trainer_writes_a_checkpoint_where_checkpoint_folder_says(tmp_path):
    """Trainer._save_checkpoint(model, trial) picks the checkpoint's folder through Trainer._get_output_dir(trial)."""
    import contextlib

    from transformers import Trainer, TrainingArguments

    for name in ("_save_checkpoint", "_get_output_dir"):
        assert hasattr(Trainer, name), f"CheckpointFolder: transformers' Trainer has no {name} any more"
    assert list(inspect.signature(Trainer._save_checkpoint).parameters) == ["self", "model", "trial"]
    elsewhere = tmp_path / "elsewhere"

    class Redirected(compat.CheckpointFolder, Trainer):
        @contextlib.contextmanager
        def checkpoint_parent(self, step):
            elsewhere.mkdir()
            yield elsewhere

    model = torch.nn.Linear(2, 2)
    args = TrainingArguments(output_dir=str(tmp_path / "output"), use_cpu=True, report_to="none", save_strategy="no")
    trainer = Redirected(model=model, args=args)
    trainer.create_optimizer_and_scheduler(num_training_steps=1)
    trainer._save_checkpoint(model, trial=None)
    assert (elsewhere / "checkpoint-0").is_dir(), "CheckpointFolder: the Trainer wrote its checkpoint elsewhere"
    assert not (tmp_path / "output" / "checkpoint-0").exists()


def test_progress_bars_are_turned_off_and_cleared_through_tqdms_internals():
    """In a fresh interpreter (the switch patches tqdm's constructor for the whole process): a live bar is in tqdm's
    private `_instances` until cleared, and a bar asked for with disable=False is off once bars are disabled."""
    import subprocess
    import sys

    code = (
        "from common import compat\nimport tqdm.std\n"
        "bar = tqdm.std.tqdm(total=3, disable=False)\nprint(bar in tqdm.std.tqdm._instances)\n"
        "compat.clear_progress_bars()\nprint(bar in tqdm.std.tqdm._instances)\n"
        "compat.disable_progress_bars()\nprint(tqdm.std.tqdm(total=3, disable=False).disable)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    live, cleared, disabled = result.stdout.split()
    assert live == "True", "clear_progress_bars: tqdm keeps its bars elsewhere than _instances"
    assert cleared == "False", "clear_progress_bars: a bar closed stays in _instances"
    assert disabled == "True", "disable_progress_bars: tqdm's constructor no longer takes disable"


def test_transformers_serve_finds_a_model_class_only_where_compat_registers_it(tmp_path, monkeypatch):
    """The server's model loader (the private `_load_model` of its ModelLoader from 5.25, of its ModelManager before)
    takes the class named in config.json's architectures from the module it imported as `transformers`: a gptscratch
    model is found there only once registered."""
    from conftest import byte_level_tokenizer, tiny_config
    from transformers.cli.serving import model_manager

    from common.model_dir import save_model_directory
    from modeling_gptscratch import GPTScratchForCausalLM

    directory = save_model_directory(GPTScratchForCausalLM(tiny_config()), byte_level_tokenizer(), tmp_path / "model")
    manager = getattr(model_manager, "ModelLoader", model_manager.ModelManager)(device="cpu")
    # The model's name as the server hands it over (before 5.24, with its revision: "DIR@main").
    name = getattr(model_manager.ModelManager, "process_model_name", str)(str(directory))
    monkeypatch.delattr(model_manager.transformers, GPTScratchForCausalLM.__name__, raising=False)
    with pytest.raises(AttributeError, match=GPTScratchForCausalLM.__name__):
        manager._load_model(name)
    compat.register_for_transformers_serve(GPTScratchForCausalLM)
    assert type(manager._load_model(name)) is GPTScratchForCausalLM


def test_transformers_gguf_reader_still_needs_the_context_key_and_reads_it_as_the_positions():
    """transformers' private GGUF table reads a gpt2 file's own context length into a name GPT2Config ignores, and
    compat's key into max_position_embeddings (GPT2Config's n_positions): when either changes, the key is no longer
    what makes a GGUF of another context than 1,024 load (or no longer needed)."""
    from transformers import GPT2Config
    from transformers.modeling_gguf_pytorch_utils import GGUF_TO_TRANSFORMERS_MAPPING

    mapping = GGUF_TO_TRANSFORMERS_MAPPING["config"]
    prefix, key = compat.TRANSFORMERS_GGUF_CONTEXT_KEY.split(".", 1)
    own = mapping["gpt2"]["context_length"]
    assert GPT2Config(**{own: 256}).n_positions == 1024, "TRANSFORMERS_GGUF_CONTEXT_KEY: transformers now reads it"
    theirs = mapping[prefix][key]
    assert GPT2Config(**{theirs: 256}).n_positions == 256, f"TRANSFORMERS_GGUF_CONTEXT_KEY: {key} now reads {theirs}"
