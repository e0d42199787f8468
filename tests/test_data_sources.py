"""Datasets from the user's files (issue 12): imagefolder:DIR, csv:FILE / jsonl:FILE and
text:FILE. Everything is built here in a temporary folder: PNGs, a WordLevel tokenizer, tiny
tables and a text; nothing is downloaded."""

from __future__ import annotations

import csv
import json
import math
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

pytest.importorskip("PIL")
pytest.importorskip("tokenizers")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: E402

from swamp.app.cli import main  # noqa: E402
from swamp.config import Settings  # noqa: E402
from swamp.data import FileOptions, load_dataset  # noqa: E402
from swamp.data import files  # noqa: E402
from swamp.errors import SwampError  # noqa: E402
from swamp.evaluation import evaluate  # noqa: E402
from swamp.loop import LevelLoop  # noqa: E402
from swamp.store import RunStore  # noqa: E402
from swamp.train.lm import TokenCrossEntropy  # noqa: E402
from swamp.train.objective import Outputs  # noqa: E402

WORDS = "the a cat dog sat ran on mat fast slow good bad big small red blue".split()
CLASSES = ["ant", "bee", "cow"]      # folder names; sorted order = class index
PER_CLASS = 8
SIDE = 6


def write_images(root: Path, per_class: int = PER_CLASS, seed: int = 0) -> None:
    """Class c's images: base grey level 40 + 80 c plus noise below 20, so the label is
    readable from the pixels, and every image differs from every other."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            a = (40 + 80 * c + rng.integers(0, 20, (SIDE, SIDE, 3))).astype(np.uint8)
            Image.fromarray(a).save(root / name / f"{i}.png")


@pytest.fixture(scope="module")
def tmp(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("data_sources")


@pytest.fixture(scope="module")
def folder(tmp) -> Path:
    write_images(tmp / "imgs")
    (tmp / "imgs" / "ant" / "notes.txt").write_text("not an image: skipped, as ImageFolder does")
    return tmp / "imgs"


@pytest.fixture(scope="module")
def tokenizer_file(tmp) -> Path:
    vocab = {"[PAD]": 0, "[UNK]": 1, **{w: i + 2 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    path = tmp / "tokenizer.json"
    tok.save(str(path))
    return path


def table_rows(n: int = 30) -> list[dict]:
    rng = np.random.default_rng(1)
    rows = []
    for i in range(n):
        label = i % 3
        words = list(rng.choice(WORDS, 2 + i % 7)) + [("good", "bad", "big")[label]]
        if i == 5:
            words += ["zebra"] * 20          # unknown words, and longer than max_length
        rows.append({"text": " ".join(words), "label": label})
    return rows


@pytest.fixture(scope="module")
def csv_file(tmp) -> Path:
    path = tmp / "t.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, ["text", "label"])
        w.writeheader()
        w.writerows(table_rows())
    return path


@pytest.fixture(scope="module")
def jsonl_file(tmp) -> Path:
    path = tmp / "t.jsonl"
    path.write_text("".join(json.dumps({"sentence": r["text"], "y": ["neg", "pos", "mid"][r["label"]]})
                            + "\n" for r in table_rows()))
    return path


@pytest.fixture(scope="module")
def text_file(tmp) -> Path:
    rng = np.random.default_rng(2)
    path = tmp / "lm.txt"
    path.write_text(" ".join(rng.choice(WORDS, 500)) + "\n")
    return path


def own_encoding(tokenizer_file: Path, texts: list[str], length: int) -> list[tuple]:
    """What the tokenizer itself gives, truncated and padded to `length`."""
    tok = Tokenizer.from_file(str(tokenizer_file))
    tok.enable_truncation(length)
    tok.enable_padding(length=length, pad_id=0, pad_token="[PAD]")
    return [(tuple(e.ids), tuple(e.attention_mask)) for e in tok.encode_batch(texts)]


def rows_of(*splits) -> list[bytes]:
    return [row.numpy().tobytes() for sp in splits for row in sp.x]


# --------------------------------------------------------------------------- image folders

def test_imagefolder_shapes_labels_and_normalisation(folder):
    raw = load_dataset(f"imagefolder:{folder}", val_fraction=0.25, split_seed=0,
                       file_options=FileOptions(image_normalize="none"), augment=False)
    n = len(raw.train) + len(raw.val) + len(raw.test)
    assert n == len(CLASSES) * PER_CLASS                       # notes.txt is not an image
    assert raw.num_classes == 3 and raw.input_shape == (3, SIDE, SIDE) and raw.task == "classification"
    assert len(raw.test) == round(0.2 * n)                      # the fixed test share
    for sp in (raw.train, raw.val, raw.test):                   # label = the folder's index
        base = (sp.x.flatten(1).min(1).values * 255 - 40) / 80
        assert torch.equal(base.round().long(), sp.y)

    norm = load_dataset(f"imagefolder:{folder}", val_fraction=0.0)
    pixels = norm.train.x.transpose(0, 1).reshape(3, -1)        # statistics of training pixels
    assert torch.allclose(pixels.mean(1), torch.zeros(3), atol=1e-4)
    assert torch.allclose(pixels.std(1), torch.ones(3), atol=1e-3)
    assert norm.augment is not None                             # crop + flip, like CIFAR

    small = load_dataset(f"imagefolder:{folder}",
                         file_options=FileOptions(image_size=4, image_mode="L"))
    assert small.input_shape == (1, 4, 4)


def test_imagefolder_split_is_seeded_disjoint_and_the_test_split_fixed(folder):
    a = load_dataset(f"imagefolder:{folder}", val_fraction=0.25, split_seed=1)
    b = load_dataset(f"imagefolder:{folder}", val_fraction=0.25, split_seed=1)
    c = load_dataset(f"imagefolder:{folder}", val_fraction=0.25, split_seed=2)
    assert torch.equal(a.val.x, b.val.x) and torch.equal(a.train.x, b.train.x)
    assert not torch.equal(a.val.x, c.val.x)                   # another seed: another split
    assert torch.equal(a.test.x, c.test.x)                      # never depends on the seed
    train, val, test = rows_of(a.train), rows_of(a.val), rows_of(a.test)
    assert len(set(train + val + test)) == len(train) + len(val) + len(test)
    assert sorted(train + val) == sorted(rows_of(c.train, c.val))


def test_imagefolder_train_and_test_folders(tmp):
    root = tmp / "tt"
    write_images(root / "train", 4, seed=3)
    write_images(root / "test", 2, seed=4)
    d = load_dataset(f"imagefolder:{root}", val_fraction=0.25)
    assert len(d.test) == 6 and len(d.train) + len(d.val) == 12
    assert Counter(d.test.y.tolist()) == {0: 2, 1: 2, 2: 2}


# --------------------------------------------------------------------------- text tables

def test_csv_tokens_equal_the_tokenizers_own_output(csv_file, tokenizer_file):
    rows = table_rows()
    opts = FileOptions(tokenizer=str(tokenizer_file), max_length=8)
    d = load_dataset(f"csv:{csv_file}", val_fraction=0.2, file_options=opts)
    assert d.input_shape == (2, 8) and d.num_classes == 3
    assert d.train.x.dtype == torch.int64 and d.vocab_size == len(WORDS) + 2
    mine = Counter((tuple(x[0].tolist()), tuple(x[1].tolist()), int(y))
                   for sp in (d.train, d.val, d.test) for x, y in zip(sp.x, sp.y))
    own = own_encoding(tokenizer_file, [r["text"] for r in rows], 8)
    assert mine == Counter((ids, mask, r["label"]) for (ids, mask), r in zip(own, rows))
    assert any(sum(mask) == 8 for _, mask in own) and any(sum(mask) < 8 for _, mask in own)


def test_jsonl_named_columns_and_label_names(jsonl_file, tokenizer_file):
    opts = FileOptions(tokenizer=str(tokenizer_file), max_length=6, text_column="sentence",
                       label_column="y")
    d = load_dataset(f"jsonl:{jsonl_file}", val_fraction=0.0, file_options=opts)
    rows = table_rows()
    names = {"neg": 0, "pos": 1, "mid": 2}
    index = {n: i for i, n in enumerate(sorted(names))}         # mid 0, neg 1, pos 2
    want = Counter((ids, mask, index[["neg", "pos", "mid"][r["label"]]]) for (ids, mask), r
                   in zip(own_encoding(tokenizer_file, [r["text"] for r in rows], 6), rows))
    got = Counter((tuple(x[0].tolist()), tuple(x[1].tolist()), int(y))
                  for sp in (d.train, d.test) for x, y in zip(sp.x, sp.y))
    assert got == want and d.num_classes == 3


def test_hf_tokenizer_directory_gives_its_own_output(tmp, csv_file, tokenizer_file):
    transformers = pytest.importorskip("transformers")
    hf_dir = tmp / "hf_tokenizer"
    transformers.PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_file), pad_token="[PAD]",
                                         unk_token="[UNK]").save_pretrained(str(hf_dir))
    tok = transformers.AutoTokenizer.from_pretrained(str(hf_dir), local_files_only=True)
    rows = table_rows()
    enc = tok([r["text"] for r in rows], padding="max_length", truncation=True, max_length=7)
    d = load_dataset(f"csv:{csv_file}", val_fraction=0.0,
                     file_options=FileOptions(tokenizer=f"hf:{hf_dir}", max_length=7))
    got = Counter((tuple(x[0].tolist()), tuple(x[1].tolist()), int(y))
                  for sp in (d.train, d.test) for x, y in zip(sp.x, sp.y))
    assert got == Counter((tuple(i), tuple(m), r["label"]) for i, m, r
                          in zip(enc["input_ids"], enc["attention_mask"], rows))


# --------------------------------------------------------------------------- causal LM

def test_lm_blocks_targets_are_the_next_token(text_file, tokenizer_file):
    ids = Tokenizer.from_file(str(tokenizer_file)).encode(text_file.read_text()).ids
    block = 16
    d = load_dataset(f"text:{text_file}", val_fraction=0.2,
                     file_options=FileOptions(tokenizer=str(tokenizer_file), block_size=block))
    n = (len(ids) - 1) // block
    n_test = round(0.2 * n)
    t = torch.tensor(ids)
    assert d.task == "lm" and d.num_classes == d.vocab_size == len(WORDS) + 2
    assert d.input_shape == (block,) and len(d.train) + len(d.val) + len(d.test) == n
    # the test text is the file's last blocks, targets one token later
    start = (n - n_test) * block
    assert torch.equal(d.test.x.flatten(), t[start:n * block])
    assert torch.equal(d.test.y.flatten(), t[start + 1:n * block + 1])
    for sp in (d.train, d.val):
        assert torch.equal(sp.y[:, :-1], sp.x[:, 1:])
    blocks = sorted(rows_of(d.train, d.val))
    assert blocks == sorted(r.numpy().tobytes() for r in t[:start].view(-1, block))
    x, y = files.blocks(list(range(10)), 3)
    assert x.tolist() == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert y.tolist() == [[1, 2, 3], [4, 5, 6], [7, 8, 9]]


def test_token_cross_entropy_and_per_token_scores_equal_a_hand_computation():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 4, 5, generator=g)              # (N, B, T, V)
    y = torch.randint(0, 5, (2, 3, 4), generator=g)
    logp = logits.log_softmax(-1)
    hand = torch.stack([-logp[i].gather(-1, y[i].unsqueeze(-1)).mean() for i in range(2)])
    assert torch.allclose(TokenCrossEntropy()(Outputs(logits), None, y), hand)
    one = TokenCrossEntropy()(Outputs(one=logits[0]), None, y[:1])
    assert torch.allclose(one, hand[:1])

    class Fixed(torch.nn.Module):       # a "model" whose logits are the ones above
        def forward(self, x):
            return logits[0][x[:, 0]]

    from swamp.data import Split
    score = evaluate(Fixed(), Split(torch.arange(3).view(3, 1), y[0]))
    assert math.isclose(score.nll, hand[0].item(), rel_tol=1e-6)
    assert math.isclose(score.acc, (logits[0].argmax(-1) == y[0]).float().mean().item())


# --------------------------------------------------------------------------- bad input

def one_line_error(fn, *fragments):
    with pytest.raises(SwampError) as e:
        fn()
    message = str(e.value)
    assert "\n" not in message, message
    for f in fragments:
        assert f in message, message
    return message


def test_bad_files_are_one_line_naming_the_file_and_fix(tmp, folder, csv_file, tokenizer_file):
    tok = FileOptions(tokenizer=str(tokenizer_file))
    bad_col = tmp / "cols.csv"
    bad_col.write_text("sentence,label\nthe cat,0\nthe dog,1\n")
    one_line_error(lambda: load_dataset(f"csv:{bad_col}", file_options=tok),
                   str(bad_col), "'text'", "text_column")
    one_line_error(lambda: load_dataset(f"csv:{csv_file}",
                                        file_options=FileOptions(tokenizer=str(tokenizer_file),
                                                                 label_column="y")),
                   "'y'", "label_column")
    empty = tmp / "empty.csv"
    empty.write_text("text,label\n")
    one_line_error(lambda: load_dataset(f"csv:{empty}", file_options=tok), str(empty), "no examples")
    empty_text = tmp / "empty.txt"
    empty_text.write_text("  \n")
    one_line_error(lambda: load_dataset(f"text:{empty_text}", file_options=tok), str(empty_text), "empty")
    bad_json = tmp / "bad.jsonl"
    bad_json.write_text('{"text": "a", "label": 0}\n{oops\n')
    one_line_error(lambda: load_dataset(f"jsonl:{bad_json}", file_options=tok), "line 2", str(bad_json))
    one_line_error(lambda: load_dataset(f"csv:{csv_file}"), "tokenizer")
    one_line_error(lambda: load_dataset(f"csv:{csv_file}",
                                        file_options=FileOptions(tokenizer=str(tmp / "nope.json"))),
                   "nope.json", "tokenizer")
    one_line_error(lambda: load_dataset(f"csv:{tmp / 'absent.csv'}", file_options=tok),
                   "absent.csv", "does not exist")
    broken = tmp / "broken"
    write_images(broken, 2)
    (broken / "bee" / "0.png").write_bytes(b"not a png")
    one_line_error(lambda: load_dataset(f"imagefolder:{broken}"), str(broken / "bee" / "0.png"),
                   "replace or remove")
    sizes = tmp / "sizes"
    write_images(sizes, 2)
    Image.new("RGB", (9, 7)).save(sizes / "cow" / "big.png")
    one_line_error(lambda: load_dataset(f"imagefolder:{sizes}"), "big.png", "image_size")
    (tmp / "noclass").mkdir()
    one_line_error(lambda: load_dataset(f"imagefolder:{tmp / 'noclass'}"), "class folders")
    short = tmp / "short.txt"
    short.write_text("the cat sat")
    one_line_error(lambda: load_dataset(f"text:{short}", file_options=tok), "block_size")


def test_a_missing_optional_package_names_its_extra(monkeypatch, folder, csv_file, tokenizer_file):
    monkeypatch.setitem(sys.modules, "PIL", None)
    one_line_error(lambda: load_dataset(f"imagefolder:{folder}"), "pip install 'swamp[vision]'")
    monkeypatch.setitem(sys.modules, "tokenizers", None)
    one_line_error(lambda: load_dataset(f"csv:{csv_file}",
                                        file_options=FileOptions(tokenizer=str(tokenizer_file))),
                   "pip install 'swamp[text]'")


def test_cli_bad_file_is_one_line_and_writes_nothing(tmp, capsys):
    bad = tmp / "nolabel.csv"
    bad.write_text("text\nthe cat\n")
    out = tmp / "runs_bad"
    code = main(["run", "--dataset", f"csv:{bad}", "--tokenizer", "x.json", "--model", "bow",
                 "--out", str(out), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--label-column" in err and str(bad) in err
    assert not out.exists()


# --------------------------------------------------------------------------- run identity

def test_the_files_contents_name_the_run(tmp, tokenizer_file):
    path = tmp / "ident.csv"
    path.write_text("text,label\n" + "".join(f"the cat {w},{i % 2}\n"
                                             for i, w in enumerate(WORDS * 2)))
    s = Settings.from_dict(dict(dataset=f"csv:{path}", tokenizer=str(tokenizer_file),
                                model="bow", out=str(tmp / "ident_runs"), device="cpu",
                                epochs=2, engine="sequential"))
    first = LevelLoop(s).store.root
    assert LevelLoop(s).store.root == first                     # same files: same run
    path.write_text(path.read_text().replace("the cat fast", "the dog fast"))
    assert LevelLoop(s).store.root != first                     # other contents: another run


# --------------------------------------------------------------------------- end to end

def run_cli(tmp, name, *flags):
    out = tmp / name
    common = ["--levels", "1", "--epochs", "2", "--batch-size", "8", "--rewind-epochs", "0",
              "--device", "cpu", "--out", str(out), "--quiet"]
    assert main(["run", *flags, *common]) == 0
    (run_dir,) = out.iterdir()
    store = RunStore(run_dir)
    rows = [json.loads(store.level_metrics_path(i).read_text()) for i in range(2)]
    return run_dir, rows


def test_end_to_end_imagefolder_with_an_mlp(tmp, folder):
    run_dir, rows = run_cli(tmp, "e2e_img", "--dataset", f"imagefolder:{folder}",
                            "--model", "mlp", "--method", "imp", "--engine", "sequential")
    assert all(0.0 <= r["test_acc"] <= 1.0 for r in rows)
    assert json.loads((run_dir / "inputs.json").read_text())["data"]


def test_end_to_end_csv_with_bag_of_words(tmp, csv_file, tokenizer_file):
    _, rows = run_cli(tmp, "e2e_csv", "--dataset", f"csv:{csv_file}", "--tokenizer",
                      str(tokenizer_file), "--max-length", "8", "--model", "bow",
                      "--method", "swamp", "--particles", "2", "--engine", "vectorised")
    assert rows[1]["sparsity"] > 0 and "test_ppl" not in rows[1]


def test_end_to_end_text_lm_reports_perplexity(tmp, text_file, tokenizer_file, capsys):
    _, rows = run_cli(tmp, "e2e_lm", "--dataset", f"text:{text_file}", "--tokenizer",
                      str(tokenizer_file), "--block-size", "16", "--model", "causal-conv",
                      "--method", "imp", "--engine", "sequential", "--lr", "0.05")
    for r in rows:
        assert math.isclose(r["test_ppl"], math.exp(r["test_nll"]))
        assert math.isfinite(r["test_nll"]) and 0.0 <= r["test_acc"] <= 1.0


def test_end_to_end_csv_with_an_hf_transformer_fine_tuned_from_its_own_run(tmp, csv_file,
                                                                            tokenizer_file):
    # the path benchmarks/finetune_transformer.py takes: hf:DIR on csv: data, pretrained
    # dense, then gradual pruning with SquareHead from that run's solution (`--weights`)
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=len(WORDS) + 2, hidden_size=16,
                                     num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=8,
                                     num_labels=3, architectures=["BertForSequenceClassification"])
    transformers.BertForSequenceClassification(config).save_pretrained(str(tmp / "bert"))
    data = ["--dataset", f"csv:{csv_file}", "--tokenizer", str(tokenizer_file),
            "--max-length", "8", "--model", f"hf:{tmp / 'bert'}", "--engine", "sequential",
            "--optimizer", "adam", "--lr", "0.001"]
    pre, _ = run_cli(tmp, "e2e_hf_pre", *data, "--method", "imp", "--levels", "0")
    solution = pre / "level_0" / "solution.safetensors"
    run_dir, rows = run_cli(tmp, "e2e_hf_ft", *data, "--method", "imp", "--weights",
                            str(solution), "--prune-schedule", "gradual", "--ramp", "cubic",
                            "--prune-fraction", "0.75", "--distill", "squarehead",
                            "--teacher", "init")
    assert rows[1]["density"] == pytest.approx(0.25, abs=1e-3)
    assert all(0.0 <= r["test_acc"] <= 1.0 and math.isfinite(r["test_nll"]) for r in rows)


# --------------------------------------------------------------------------- token models

def test_token_models_shapes_masking_and_causality():
    from swamp.models import build_model

    torch.manual_seed(0)
    bow = build_model("bow", (2, 6), 3, vocab_size=20)
    ids = torch.randint(1, 20, (4, 6))
    mask = torch.ones(4, 6, dtype=torch.int64)
    mask[:, 4:] = 0
    out = bow(torch.stack([ids, mask], 1))
    assert out.shape == (4, 3)
    other = ids.clone()
    other[:, 4:] = 0                                  # padding positions do not count
    assert torch.equal(bow(torch.stack([other, mask], 1)), out)

    lm = build_model("causal-conv", (8,), 20, vocab_size=20)
    x = torch.randint(0, 20, (2, 8))
    logits = lm(x)
    assert logits.shape == (2, 8, 20)
    later = x.clone()
    later[:, 5] = (later[:, 5] + 1) % 20             # a later token never changes the past
    changed = lm(later)
    assert torch.equal(changed[:, :5], logits[:, :5]) and not torch.equal(changed[:, 5:], logits[:, 5:])
    one_line_error(lambda: build_model("bow", (2, 6), 3), "token ids", "csv:FILE")


def test_a_finished_run_reads_its_files_only_where_told_and_only_if_unchanged(tmp, csv_file,
                                                                             tokenizer_file):
    from swamp.reader import RunReader

    copy = tmp / "reader" / "t.csv"
    copy.parent.mkdir()
    copy.write_bytes(csv_file.read_bytes())
    run_dir, _ = run_cli(tmp, "reader_runs", "--dataset", "csv:t.csv", "--data-dir",
                         str(copy.parent), "--tokenizer", str(tokenizer_file), "--max-length",
                         "8", "--model", "bow", "--method", "imp", "--engine", "sequential")
    one_line_error(lambda: RunReader(run_dir).data, "data_dir", "csv:t.csv")
    reader = RunReader(run_dir, data_dir=str(copy.parent))
    assert len(reader.data.train) + len(reader.data.val) + len(reader.data.test) == 30
    copy.write_text(copy.read_text().replace("good", "bad"))
    one_line_error(lambda: RunReader(run_dir, data_dir=str(copy.parent)).data,
                   "fingerprints differ")


def test_csv_quoted_newlines_stay_in_one_example(tmp, tokenizer_file):
    path = tmp / "quoted.csv"
    path.write_text('text,label\n"the cat\nsat",pos\n"the dog ran",neg\n"a mat",pos\n')
    d = load_dataset(f"csv:{path}", val_fraction=0.0,
                     file_options=FileOptions(tokenizer=str(tokenizer_file), max_length=4))
    assert len(d.train) + len(d.test) == 3 and d.num_classes == 2
    own = own_encoding(tokenizer_file, ["the cat\nsat", "the dog ran", "a mat"], 4)
    got = {(tuple(x[0].tolist()), int(y)) for sp in (d.train, d.test) for x, y in zip(sp.x, sp.y)}
    assert got == {(own[0][0], 1), (own[1][0], 0), (own[2][0], 1)}


def test_test_path_gives_the_test_split(tmp, csv_file, tokenizer_file):
    test_file = tmp / "held_out.jsonl"
    test_file.write_text('{"text": "the big cat", "label": 2}\n{"text": "a red dog", "label": 0}\n')
    d = load_dataset(f"csv:{csv_file}", val_fraction=0.1,
                     file_options=FileOptions(tokenizer=str(tokenizer_file), max_length=5,
                                              test_path=str(test_file)))
    own = own_encoding(tokenizer_file, ["the big cat", "a red dog"], 5)
    assert [tuple(x[0].tolist()) for x in d.test.x] == [own[0][0], own[1][0]]
    assert d.test.y.tolist() == [2, 0] and len(d.train) + len(d.val) == 30
