"""The jitted scorer against PyTorch transformers on a tiny Llama with the real XLM-R tokenizer.

The reference rule is re-computed exactly as the reference evaluator does it: the item's candidates tokenized
together with padding="longest" (pad = EOS, the tokenizer's padding side, default special tokens), one forward,
fp64 log-softmax, sum over every non-first non-pad token. Completion scores are re-computed row by row in fp64.
"""
import jax
import numpy as np
import pytest
import tokenizers
import torch
import transformers
from flax import nnx

from tests.test_tokenize import xlmr_tokenizer
from xalign_jax import bench, models, xla_options
from xalign_jax.evaluation import fewshot, report, runner, scorer, tasks, templates

SHOTS = (0, 1)
ITEMS = 2


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(torch model, our model, tokenizer) of one random tiny Llama saved in HF format."""
    tok = xlmr_tokenizer()
    config = transformers.LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=False,
        initializer_range=0.2,   # sharp attention: at the default 0.02 a wrong prefix position changes no score visibly
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    reference = transformers.LlamaForCausalLM(config).eval()
    path = tmp_path_factory.mktemp("tiny_llama")
    reference.save_pretrained(path)
    tok.save_pretrained(path)
    return reference, models.from_pretrained(path, dtype="float32"), tok, path


def _reference_item_scores(model, tok, texts: list[str]) -> np.ndarray:
    """The reference's batch_prompts_inference_choices for one item (log base e; log2 keeps the argmax).

    One deliberate difference: a token is scored only when the previous position is real too. Under right padding
    that is the reference's mask exactly; under LEFT padding the reference also scores the first real token (BOS) of
    every row shorter than the longest, predicted from pad positions (a padding artefact worth ~12 nats on this
    model, which would make the candidates' scores depend on their neighbours' lengths); the stated rule, "every
    non-first non-pad token of the string", excludes it.
    """
    tok.pad_token = tok.eos_token
    batch = tok(texts, padding="longest", return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits[:, :-1]
    target = logits.gather(2, batch.input_ids[:, 1:, None])[..., 0].double()
    logprob = target - torch.stack([torch.logsumexp(row.double(), dim=-1) for row in logits])
    scored = batch.attention_mask[:, 1:] * batch.attention_mask[:, :-1]
    return (logprob * scored).sum(dim=1).numpy()


def _completion_scores(model, tok, prompts) -> np.ndarray:
    """lm-eval-harness loglikelihood: encode the whole text, continuation = tokens after the encoded context; a
    context that encodes to nothing (no BOS) is lm-eval's [EOS]."""
    out = []
    for prompt in prompts:
        whole = tok(prompt.text)["input_ids"]
        start = len(tok(prompt.context.rstrip())["input_ids"])
        if not start:
            whole, start = [tok.eos_token_id, *whole], 1
        ids = torch.tensor([whole])
        with torch.no_grad():
            logits = model(ids).logits[0, start - 1:-1]
        target = logits.gather(1, ids[0, start:, None])[:, 0].double()
        out.append((target - torch.logsumexp(logits.double(), dim=-1)).sum().item())
    return np.array(out)


def _task_prompts(task: str, shots: int, tok, shared_data):
    template = templates.get_template(task, "en")
    pool = tasks.load_part(task, "en", "demo", shared_data)
    items = tasks.load_part(task, "zh" if task != "xwinograd" else "fr", "test", shared_data)[:ITEMS]
    demo_text = fewshot.render_demos(template, fewshot.select_demos(pool, shots, 0), tok.eos_token)
    return [fewshot.build_prompts(template, item, demo_text) for item in items]


def _assert_same_predictions(got: np.ndarray, expected: np.ndarray, per_item) -> None:
    bounds = np.cumsum([0] + [len(p) for p in per_item])
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        assert np.argmax(got[lo:hi]) == np.argmax(expected[lo:hi])


@pytest.mark.parametrize("task", sorted(tasks.TASKS))
def test_scores_and_predictions_equal_pytorch(tiny, shared_data, task):
    """Our rows are laid out by the scorer (never padded by the tokenizer), so ONE score must equal the reference
    computed with a right- AND with a left-padding tokenizer. Each item's candidates run as one prefix tree
    (``groups``); relative reference scores leave out what they share and must differ within an item as the
    reference's do."""
    from benchmarks.eval_speed import item_groups, within_item
    reference_model, model, tok, _ = tiny
    ours = scorer.Scorer(model, batch_rows=4, buckets=(64, 128, 256, 512))
    relative_scorer = scorer.Scorer(model, batch_rows=4, buckets=(64, 128, 256, 512), reference_scores="relative")
    continuation_scorer = scorer.Scorer(model, batch_rows=4, buckets=(64, 128, 256, 512), positions="continuation")
    for shots in SHOTS:
        per_item = _task_prompts(task, shots, tok, shared_data)
        flat = [p for prompts in per_item for p in prompts]
        groups = item_groups(per_item)
        got = ours.score(scorer.encode_prompts(tok, flat), groups=groups)
        relative = relative_scorer.score(scorer.encode_prompts(tok, flat), groups=groups)
        for padding_side in ("right", "left"):
            tok.padding_side = padding_side
            expected = np.concatenate([_reference_item_scores(reference_model, tok, [p.text for p in prompts])
                                       for prompts in per_item])
            np.testing.assert_allclose(got.reference, expected, rtol=1e-5, atol=1e-3)
            _assert_same_predictions(got.reference, expected, per_item)
            _assert_same_predictions(relative.reference, expected, per_item)
            np.testing.assert_allclose(within_item(relative.reference, groups), within_item(expected, groups),
                                       rtol=1e-5, atol=1e-3)
        np.testing.assert_allclose(relative.completion, got.completion, rtol=1e-6)   # other rows compute them
        expected = _completion_scores(reference_model, tok, flat)
        np.testing.assert_allclose(got.completion, expected, rtol=1e-5, atol=1e-3)
        _assert_same_predictions(got.completion, expected, per_item)
        continuation_only = continuation_scorer.score(scorer.encode_prompts(tok, flat), groups=groups)
        np.testing.assert_allclose(continuation_only.completion, expected, rtol=1e-5, atol=1e-3)
        assert np.isnan(continuation_only.reference).all()


def test_a_context_free_continuation_is_scored_after_an_eos_as_lm_eval_does(tiny, caplog):
    """Under a tokenizer without BOS an empty context encodes to nothing; lm-eval then predicts the continuation
    from [EOS], every token of it. Continuation-only scoring does the same; otherwise the first token is unscored,
    with a warning."""
    reference_model, model, _, _ = tiny
    tok = xlmr_tokenizer()
    tok.backend_tokenizer.post_processor = tokenizers.processors.Sequence([])      # no BOS, no EOS added
    prompts = [fewshot.Prompt("", "Hello world"), fewshot.Prompt("", "Goodbye world"),
               fewshot.Prompt("The answer is", " yes")]
    expected = _completion_scores(reference_model, tok, prompts)
    continuation = scorer.Scorer(model, batch_rows=4, buckets=(16,), positions="continuation")
    got = continuation.score(scorer.encode_prompts(tok, prompts, eos_before_empty_context=True))
    np.testing.assert_allclose(got.completion, expected, rtol=1e-5, atol=1e-4)
    assert list(got.num_tokens) == [len(tok(p.continuation.strip())["input_ids"]) for p in prompts]
    with caplog.at_level("WARNING", logger=scorer.__name__):
        without = continuation.score(scorer.encode_prompts(tok, prompts))
    assert "2 of 3 prompts have no context tokens" in caplog.text
    assert np.all(np.abs(without.completion[:2] - expected[:2]) > 0.1)     # the first token's term is missing
    np.testing.assert_allclose(without.completion[2], expected[2], rtol=1e-5)


def test_connector_is_the_eos_token(tiny):
    _, _, tok, _ = tiny
    ids = tok("a</s>b", add_special_tokens=False)["input_ids"]
    assert tok.eos_token_id in ids and len(ids) == 3


@pytest.mark.slow
def test_vocab_chunking_and_mesh_sharding_give_the_same_scores(tiny, shared_data):
    _, model, tok, path = tiny
    rows = scorer.encode_prompts(tok, [p for ps in _task_prompts("pawsx", 2, tok, shared_data) for p in ps])
    plain = scorer.Scorer(model, batch_rows=8).score(rows)
    chunked = scorer.Scorer(model, batch_rows=8, head_positions=7).score(rows)
    np.testing.assert_allclose(chunked.reference, plain.reference, rtol=1e-6)
    mesh = jax.make_mesh((8, 1, 1), ("data", "fsdp", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 3)
    sharded_model = models.from_pretrained(path, dtype="float32", mesh=mesh)
    sharded = scorer.Scorer(sharded_model, batch_rows=8, mesh=mesh).score(rows)
    np.testing.assert_allclose(sharded.reference, plain.reference, rtol=1e-5)
    np.testing.assert_allclose(sharded.completion, plain.completion, rtol=1e-5, atol=1e-4)


def test_cpu_vocabulary_blocks_give_the_token_major_log_probabilities(tiny):
    """The CPU's vocabulary calls (blocks of the 250,002-row vocabulary, running log-sum-exp, in either layout)
    compute what the accelerators' whole [C, V] ones do, and both what a plain log-softmax of the model's logits
    gives."""
    _, model, _, _ = tiny
    graphdef, params = nnx.split(model, nnx.Param)
    vocab = model.config.vocab_size
    hidden = jax.random.normal(jax.random.PRNGKey(0), (3, 10, model.config.hidden_size))
    row, source = np.array([0, 2, 2, 1, 0]), np.array([9, 0, 4, 4, 1])
    target = np.array([0, vocab - 1, 14706, 14705, 3])      # first and last rows, both sides of a block boundary
    whole, blocked, token_major = (
        scorer.programs().vocabulary(graphdef, params, hidden, row, source, target, vocab_block, token_major)
        for vocab_block, token_major in ((None, False), (16384, False), (16384, True)))
    np.testing.assert_allclose(np.asarray(blocked), np.asarray(whole), rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(np.asarray(token_major), np.asarray(whole), rtol=1e-6, atol=1e-5)
    logits = np.asarray(model.logits(hidden[row, source]), np.float64)
    expected = logits[np.arange(5), target] - np.log(np.exp(logits).sum(-1))
    np.testing.assert_allclose(np.asarray(whole), expected, rtol=1e-5, atol=1e-5)


def test_a_bf16_model_scores_as_its_own_plain_forward_pass(tiny, shared_data):
    """A bf16 model on CPU runs its products in bf16 with fp32 results (``layers.dense``) and its vocabulary calls
    token-major under XLA's defaults. Its scores are the log-softmax of the same bf16 model's whole-row logits,
    summed on the host: the trees, the cached demonstrations and the blocks change no rounding a score sees beyond
    the fp32 sums' order. And they stay near the fp32 model's: the difference is bf16 rounding."""
    from benchmarks.eval_speed import item_groups
    _, fp32_model, tok, path = tiny
    model = models.from_pretrained(path, dtype="bfloat16", param_dtype="bfloat16")
    per_item = _task_prompts("pawsx", 1, tok, shared_data)
    rows = scorer.encode_prompts(tok, [p for prompts in per_item for p in prompts])
    ours = scorer.Scorer(model, batch_rows=4, buckets=(64, 128, 256))
    assert ours._token_major and ours.programs == scorer.programs()   # XLA's defaults
    got = ours.score(rows, groups=item_groups(per_item))
    plain = []
    for row in rows:
        logits = np.asarray(model(np.array([row.ids])).logits[0, :-1], np.float64)
        picked = logits[np.arange(len(row.ids) - 1), row.ids[1:]]
        plain.append((picked - np.log(np.exp(logits).sum(-1))).sum())
    np.testing.assert_allclose(got.reference, plain, rtol=1e-6)
    in_fp32 = scorer.Scorer(fp32_model, batch_rows=4, buckets=(64, 128, 256)).score(rows)
    np.testing.assert_allclose(got.reference, in_fp32.reference, rtol=1e-3)
    assert not np.allclose(got.reference, in_fp32.reference, rtol=1e-5)   # it did run in bf16


def test_an_fp32_models_forward_passes_compile_with_the_cpu_options_and_keep_their_products_plain_dots(tiny):
    """An fp32 model's scorer compiles its forward passes, not only its vocabulary calls, with the CPU options:
    its products stay XLA's dots where XLA's defaults fuse them into YNNPACK calls (with jax 0.12.0.1 on an AVX2
    CPU those put the real SmolLM2's fp32 logits 1.9e-3 off float64 ones; BENCHMARKS.md)."""
    _, model, _, _ = tiny
    ours = scorer.Scorer(model, batch_rows=2, buckets=(16,))
    assert ours.programs == scorer.programs(xla_options.CPU_MATMULS_BY_XLA)
    ids = np.ones((2, 16), np.int32)
    positions, segments = np.tile(np.arange(16, dtype=np.int32), (2, 1)), np.ones((2, 16), np.int32)

    def program(programs: scorer.Programs) -> str:
        lowered = programs.rows.lower(ours.graphdef, ours.params, ids, positions, segments, 0 * segments, None)
        return lowered.compile().as_text()
    assert "__ynn_fusion" in program(scorer.programs())
    compiled_with_options = program(ours.programs)
    assert "__ynn_fusion" not in compiled_with_options and " dot(" in compiled_with_options


def test_a_calls_remaining_positions_go_in_the_next_power_of_two():
    assert [scorer._remainder_size(n, 128) for n in (1, 16, 17, 40, 64, 65, 127)] == [16, 16, 32, 64, 64, 128, 128]
    assert [scorer._remainder_size(n, 7) for n in (1, 6)] == [7, 7]


@pytest.mark.slow
def test_whole_task_compiles_once_per_bucket_and_reports(tiny, shared_data, tmp_path):
    _, model, tok, _ = tiny
    cfg = runner.default_eval_config()
    cfg.update({"tasks": ("xcopa",), "languages": "en,zh", "max_items": 12, "dev_max_items": 4,
                "data_dir": str(shared_data), "buckets": (128, 256, 512), "predictions": True})
    results = runner.evaluate_tasks(model, tok, cfg, split="test")
    assert set(k for k in results if k.startswith("xcopa")) == {
        "xcopa_en_s0_i0", "xcopa_en_s5_i0", "xcopa_zh_s0_i0", "xcopa_zh_s5_i0"}
    assert results["run"]["compiles"] <= 6    # forward and prefix per length bucket + vocabulary call sizes, whole grid
    assert results["avg_zero"] == pytest.approx((results["xcopa_en_s0_i0"] + results["xcopa_zh_s0_i0"]) / 2)
    assert results["gap_to_en"]["xcopa_zh_s5_i0"] == pytest.approx(
        results["xcopa_en_s5_i0"] - results["xcopa_zh_s5_i0"])
    again = runner.evaluate_tasks(model, tok, cfg, split="dev")
    assert again["run"]["compiles"] <= 6
    report.write_eval_outputs(results, {}, tmp_path)
    assert "| xcopa | zh |" in (tmp_path / "results.md").read_text()
    assert len((tmp_path / "predictions.jsonl").read_text().splitlines()) == 4 * 12


def test_continuation_positions_refuse_the_reference_rule():
    cfg = runner.default_eval_config()
    cfg.score_positions = "continuation"
    with pytest.raises(ValueError, match="score_positions='continuation' computes no reference-rule score"):
        runner.evaluate_tasks(None, None, cfg)


def test_dev_evaluation_leaves_out_tasks_without_a_dev_part_and_unknown_languages_are_errors(shared_data):
    cfg = runner.default_eval_config()
    cfg.update({"tasks": ("xcopa", "xwinograd"), "languages": "en,zh"})
    assert runner._grid_tasks(cfg, "dev", shared_data) == [("xcopa", ["en", "zh"])]
    assert runner._grid_tasks(cfg, "test", shared_data) == [("xcopa", ["en", "zh"]), ("xwinograd", ["en", "zh"])]
    cfg.languages = "en,zn"
    with pytest.raises(ValueError, match="eval.languages: zn is in none of the tasks xcopa,xwinograd"):
        runner._grid_tasks(cfg, "test", shared_data)


class _RecordingScorer:
    """Stands in for the model: records each row's token ids and scores every row 0 (this test checks which
    demonstrations the runner puts in front of which item, not any score)."""

    continuation_only = False

    def __init__(self):
        self.rows = []

    def score(self, rows, params=None, groups=None):
        self.rows = rows
        zeros = np.zeros(len(rows))
        return scorer.RowScores(zeros, zeros, np.ones(len(rows)), np.ones(len(rows)))


def test_an_item_among_the_shared_demonstrations_gets_its_own_without_itself(shared_data):
    """5-shot PAWS-X en dev: the items that are themselves among the seed's shared demonstrations get another
    sample, excluding them; every other item gets the shared ones."""
    tok = xlmr_tokenizer()
    pool = tasks.load_part("pawsx", "en", "demo", shared_data)
    shared = fewshot.select_demos(pool, 5, 0)
    items = shared[:2] + [item for item in tasks.load_part("pawsx", "en", "dev", shared_data)
                          if item.key not in {d.key for d in shared}][:2]
    cfg = runner.default_eval_config()
    recording = _RecordingScorer()
    runner._run_one(recording, tok, cfg, "pawsx", "en", items, pool, 5, 0, None)
    template = templates.get_template("pawsx", "en", cfg.templates["pawsx"])
    connector = fewshot.connector_text(template, tok.eos_token)
    rows_per_item = len(recording.rows) // len(items)
    for index, item in enumerate(items):
        demos = fewshot.select_demos(pool, 5, 0, evaluated=item) if index < 2 else shared
        assert item.key not in {d.key for d in demos}
        prompt = fewshot.build_prompts(template, item, fewshot.render_demos(template, demos, connector))[0]
        assert recording.rows[index * rows_per_item].ids == tuple(tok(prompt.text)["input_ids"]), index


def test_unnamed_translations_get_english_demonstrations_without_a_wsc_schema(shared_data):
    """XWinograd fr, 5-shot, English template and demonstrations (cross-lingual): seed 1's shared draw holds a
    WSC273 row, which could be a French item's original, so every French item gets the first five others."""
    tok = xlmr_tokenizer()
    pool = tasks.load_part("xwinograd", "en", "demo", shared_data)
    items = tasks.load_part("xwinograd", "fr", "test", shared_data)[:3]
    assert {d.collection for d in fewshot.select_demos(pool, 5, 1)} & tasks.WSC_COLLECTIONS
    cfg = runner.default_eval_config()
    cfg.prompt_language = "en"
    recording = _RecordingScorer()
    runner._run_one(recording, tok, cfg, "xwinograd", "fr", items, pool, 5, 1, None)
    expected = [d for d in fewshot.select_demos(pool, 10, 1) if d.collection not in tasks.WSC_COLLECTIONS][:5]
    template = templates.get_template("xwinograd", "en", cfg.templates["xwinograd"])
    demo_text = fewshot.render_demos(template, expected, fewshot.connector_text(template, tok.eos_token))
    prompts = [p for item in items for p in fewshot.build_prompts(template, item, demo_text)]
    assert [row.ids for row in recording.rows] == [tuple(tok(p.text)["input_ids"]) for p in prompts]


def test_a_score_that_is_not_finite_names_the_item():
    items = [tasks.Item(str(i), {}, 0, ("a", "b"), f"x.tsv:{i + 2}") for i in range(3)]
    owners = np.repeat(np.arange(3), 2)
    scores = np.zeros(6)
    runner._check_finite({"completion": scores}, items, owners, {"task": "xcopa", "language": "zh", "shots": 0})
    scores[3] = np.nan
    with pytest.raises(ValueError, match=r"eval xcopa zh 0-shot: completion scores are not finite for 1 item\(s\), "
                                         r"first x\.tsv:3"):
        runner._check_finite({"completion": scores}, items, owners, {"task": "xcopa", "language": "zh", "shots": 0})


def _row(ids, start):
    return scorer.EncodedRow(tuple(ids), start, 0)


def test_plan_scores_each_distinct_prefix_once_and_skips_identical_rows():
    rows = [_row([5, 1, 2, 3], 3), _row([5, 1, 2, 4, 6], 3), _row([5, 1, 2, 3], 3), _row([7, 1, 2], 2)]
    plan = scorer.plan_scoring(rows, continuation_only=False)
    first, second, same, other = plan.row_nodes
    np.testing.assert_array_equal(first[:2], second[:2])          # "5 1", "5 1 2" are shared
    assert first[2] != second[2] and not set(other) & set(first)  # a different first token shares nothing
    np.testing.assert_array_equal(same, first)
    owned = plan.owner_row >= 0
    assert owned.sum() == 3 + 2 + 2                               # 3 + the second row's 4 and 6 + "7 1", "7 1 2"
    assert set(plan.owner_row[first]) == {0} and list(plan.owner_row[second]) == [0, 0, 1, 1]
    np.testing.assert_array_equal(plan.owner_pos[second], [1, 2, 3, 4])
    assert 2 not in plan.owner_row                                 # the identical row does not run


def test_grouped_plan_leaves_out_the_tokens_every_row_of_a_group_shares():
    demos = [9, 8, 7]
    rows = [_row(demos + [1, 2, 3], 5), _row(demos + [1, 4, 5], 5),      # item 0: differ at token 4
            _row(demos + [6, 2], 4), _row(demos + [6, 2, 3], 4),          # item 1: one row a prefix of the other
            _row(demos + [1, 2, 4], 4)]                                  # item 2 alone: its continuation only
    plan = scorer.plan_scoring(rows, continuation_only=False, groups=[0, 0, 1, 1, 2])
    np.testing.assert_array_equal(plan.first_scored, [4, 4, 4, 4, 4])
    for nodes, first in zip(plan.row_nodes, plan.first_scored):
        assert (plan.owner_row[nodes[:first - 1]] == -1).all() and (plan.owner_row[nodes[first - 1:]] >= 0).all()
    assert plan.owner_row[plan.row_nodes[4][3]] == 0    # "9 8 7 1 2" is item 0's: computed once for both items
    np.testing.assert_array_equal(scorer.first_scored_tokens(rows, False, [0, 0, 0, 0, 0]), [3, 3, 3, 3, 3])
    np.testing.assert_array_equal(scorer.first_scored_tokens(rows, False), [1] * 5)


def test_a_groups_rows_run_their_shared_tokens_once_as_one_tree():
    rows = [_row([9, 8, 1, 2, 3, 4], 3), _row([9, 8, 1, 5], 3), _row([9, 8, 1, 2, 6], 3), _row([9, 7, 7], 2)]
    ends = {0: 6, 1: 4, 2: 5, 3: 3}
    first, second = scorer.prefix_trees(rows, ends, cut=1, groups=[0, 0, 0, 1])
    assert (list(first.trunk), first.trunk_end, first.ends, first.size) == ([8, 1], 3, {0: 6, 1: 4, 2: 5}, 2 + 6)
    assert (list(second.trunk), second.ends, second.size) == ([7, 7], {3: 3}, 2)
    np.testing.assert_array_equal(first.slots(np.array([1, 2, 3, 5]), offset=10, branch_start=14), [10, 11, 14, 16])
    alone = scorer.prefix_trees(rows, ends, cut=1, groups=None)
    assert [(list(t.trunk), t.ends) for t in alone] == [([8, 1, 2, 3, 4], {0: 6}), ([8, 1, 5], {1: 4}),
                                                         ([8, 1, 2, 6], {2: 5}), ([7, 7], {3: 3})]
    packed = scorer.PackedTrees.empty(1, 12, pad_id=0)
    assert packed.place(first, rows, slot=0, offset=2, segment=2) == {0: 4, 1: 7, 2: 8}
    np.testing.assert_array_equal(packed.ids[0], [0, 0, 8, 1, 2, 3, 4, 5, 2, 6, 0, 0])
    np.testing.assert_array_equal(packed.positions[0], [0, 0, 1, 2, 3, 4, 5, 3, 3, 4, 0, 0])
    np.testing.assert_array_equal(packed.branches[0], [0, 0, 0, 0, 1, 1, 1, 2, 3, 3, 0, 0])
    np.testing.assert_array_equal(packed.segments[0], [0, 0] + [2] * 8 + [0, 0])


def test_relative_and_absolute_reference_scores_predict_the_same(tiny, shared_data):
    _, model, tok, _ = tiny
    cfg = runner.default_eval_config()
    cfg.update({"tasks": ("xstorycloze",), "languages": "zh", "max_items": 4, "shots": (0, 1),
                "data_dir": str(shared_data), "buckets": (128, 256), "predictions": True})
    results = {}
    for setting in scorer.REFERENCE_SCORES:
        cfg.reference_scores = setting
        results[setting] = runner.evaluate_tasks(model, tok, cfg, split="test", progress=False)["details"]
    for relative, absolute in zip(results["relative"], results["absolute"]):
        assert relative["reference_scores"] == "relative" and relative["accuracy"] == absolute["accuracy"]
        for mine, theirs in zip(relative["predictions"], absolute["predictions"]):
            shift = np.subtract(theirs["scores"]["reference"], mine["scores"]["reference"])
            assert shift[0] < -1 and np.allclose(shift, shift[0], atol=1e-5)   # the story's log-likelihood
            np.testing.assert_allclose(mine["scores"]["completion"], theirs["scores"]["completion"], rtol=1e-6)
    cfg.reference_scores = "whole"
    with pytest.raises(ValueError, match="reference_scores 'whole': expected one of"):
        runner.evaluate_tasks(model, tok, cfg)
    with pytest.raises(ValueError, match="groups: 1 group ids for 2 rows"):
        scorer.Scorer(model).score([_row([5, 1, 2], 2), _row([5, 1, 3], 2)], groups=[0])


def test_continuation_plan_leaves_context_positions_unowned():
    rows = [_row([5, 1, 2, 3], 3), _row([5, 1, 9, 4], 2)]
    plan = scorer.plan_scoring(rows, continuation_only=True)
    np.testing.assert_array_equal(plan.owner_row[plan.row_nodes[0]], [-1, -1, 0])
    np.testing.assert_array_equal(plan.owner_row[plan.row_nodes[1]], [-1, 1, 1])


def test_only_a_long_prefix_shared_by_every_running_row_is_cached():
    shared = list(range(5, 5 + scorer.MIN_CACHED_PREFIX))
    rows = [_row(shared + [1, 2], 2), _row(shared + [3], 2), _row(shared + [1, 2], 2)]
    assert scorer.cached_prefix_length(rows, scorer.plan_scoring(rows, False)) == len(shared)
    short = [_row(shared[:-1] + [1], 2), _row(shared[:-1] + [3], 2)]
    assert scorer.cached_prefix_length(short, scorer.plan_scoring(short, False)) == 0
    other = rows + [_row([7] + shared, 2)]
    assert scorer.cached_prefix_length(other, scorer.plan_scoring(other, False)) == 0


def test_rows_with_different_demonstrations_score_like_separate_calls(tiny, shared_data):
    """Per-item demonstrations share no prefix across items: the tree must still give each row its own score."""
    _, model, tok, _ = tiny
    per_item = [_task_prompts("xcopa", shots, tok, shared_data)[0] for shots in (0, 1, 2)]
    ours = scorer.Scorer(model, batch_rows=4, buckets=(64, 128, 256, 512))
    together = ours.score(scorer.encode_prompts(tok, [p for prompts in per_item for p in prompts]))
    apart = np.concatenate([ours.score(scorer.encode_prompts(tok, prompts)).reference for prompts in per_item])
    np.testing.assert_allclose(together.reference, apart, rtol=1e-5)


def test_eval_speed_work_ratio_is_reference_positions_over_the_positions_candidates_do_not_share():
    from benchmarks import eval_speed
    tok = xlmr_tokenizer()
    item = [fewshot.Prompt("The cat sat on the", " mat."), fewshot.Prompt("The cat sat on the", " big red chair.")]
    first, second = (tok(p.text)["input_ids"] for p in item)
    common = next(i for i, (a, b) in enumerate(zip(first, second)) if a != b)
    start = len(tok(item[0].context)["input_ids"])
    assert start >= common
    distinct = (len(first) - common) + (len(second) - common)  # what the two rows do not share
    assert eval_speed.work_ratio(tok, [item]) == pytest.approx(2 * max(len(first), len(second)) / distinct)
    np.testing.assert_array_equal(eval_speed.within_item(np.array([3., 5., 4., 1., 2.]), np.array([0, 0, 2, 2, 2])),
                                  [0, 2, 0, -3, -2])


def test_the_last_forward_call_runs_only_the_rows_it_needs(tiny):
    assert [scorer._call_rows(used, 16, 1) for used in (1, 2, 3, 5, 9, 16)] == [1, 2, 4, 8, 16, 16]
    assert [scorer._call_rows(used, 16, 8) for used in (1, 9)] == [8, 16]         # whole rows per batch device
    assert [scorer._call_rows(used, 12, 4) for used in (3, 5, 9)] == [4, 8, 12]
    assert [scorer._call_rows(used, 6, 3) for used in (1, 4)] == [3, 6]
    _, model, _, _ = tiny
    rows = [_row([5 + r] + list(range(100 + 40 * r, 140 + 40 * r)), 30) for r in range(5)]   # one row of 64 each
    ours = scorer.Scorer(model, batch_rows=4, buckets=(64,))
    together = ours.score(rows)
    assert {shape for shape in ours.shapes_seen if shape[0] == "rows"} == {("rows", 4, 64), ("rows", 1, 64)}
    alone = np.concatenate([ours.score([row]).reference for row in rows])
    np.testing.assert_allclose(together.reference, alone, rtol=1e-6)


def test_eval_speed_reference_loop_scores_like_the_scorer_in_nats(tiny, shared_data):
    """The benchmark's reference loop (log2 of the softmax, as the reference) converted to nats equals our scores."""
    from benchmarks import eval_reference, eval_speed
    reference, model, tok, _ = tiny
    per_item = _task_prompts("xcopa", 1, tok, shared_data)
    _, expected = eval_reference.reference_loop(reference, tok, eval_speed.prompt_texts(per_item))
    got = scorer.Scorer(model, batch_rows=4).score(scorer.encode_prompts(tok, [p for ps in per_item for p in ps]))
    np.testing.assert_allclose(got.reference, expected, rtol=1e-4, atol=1e-3)


def test_eval_speed_reference_loop_runs_with_bf16_weights(tiny, shared_data):
    """The DeepSpeed setting of the reference's evaluation (bf16 weights): the same scores up to bf16 rounding."""
    import copy

    import torch

    from benchmarks import eval_reference, eval_speed
    reference, _, tok, _ = tiny
    texts = eval_speed.prompt_texts(_task_prompts("xcopa", 1, tok, shared_data))
    _, in_fp32 = eval_reference.reference_loop(reference, tok, texts)
    _, in_bf16 = eval_reference.reference_loop(copy.deepcopy(reference).to(torch.bfloat16), tok, texts)
    assert not np.array_equal(in_bf16, in_fp32)
    np.testing.assert_allclose(in_bf16, in_fp32, rtol=0.05)


def test_the_reference_loop_process_scores_as_the_loop_here(tiny, shared_data, tmp_path):
    """``eval_speed``'s loop in its own process (``eval_reference.serve`` behind a ``JsonLinesWorker``): the same
    scores as the loop run here, each dtype loaded from the same checkpoint, and its peak RSS at the end."""
    from benchmarks import eval_reference, eval_speed
    reference, _, tok, path = tiny
    per_item = _task_prompts("xcopa", 1, tok, shared_data)
    items_path = eval_speed.write_items(per_item, tmp_path)
    for dtype in ("float32", "bfloat16"):
        loop = bench.JsonLinesWorker(["-m", "benchmarks.eval_reference", str(path), dtype, "cpu"], "the test loop")
        assert loop.ready["ready"] and loop.ready["threads"]["OMP_WAIT_POLICY"] == "PASSIVE"
        seconds, scores = eval_speed._reference(loop, items_path)
        assert seconds > 0 and loop.close()["peak_rss_bytes"] > 0
        _, expected = eval_reference.reference_loop(eval_reference.load_model(str(path), dtype, "cpu"), tok,
                                                    eval_speed.prompt_texts(per_item))
        np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-5)   # torch may use other thread counts
