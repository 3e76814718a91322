"""The text demo: a tiny transformer on sentiment sentences generated here, explained per token.

Sentences of 5 to 12 words mix filler words with one or two sentiment words, each
possibly negated by a "not" in front; the label is the sign of the summed sentiment, with
5% of the labels flipped (so some mistakes are the data's, not the model's). A one-layer
transformer encoder reads the padded ids and the attention mask. Each test sentence is
explained with :func:`gradshap.token_attributions` at the embedding layer, against
training sentences of the same length (Expected Gradients), so every word's attribution
is in logit units and a sentence's attributions add up to ``f(x) - E f(b)`` up to the
reported residual. PyTorch only.
"""

from __future__ import annotations

import sys

import numpy as np

import gradshap
from gradshap._demo import _common
from gradshap._demo._report import Report, confusion_figure
from gradshap._groups import CONFUSION

POSITIVE = ("good", "great", "excellent", "wonderful", "fun")
NEGATIVE = ("bad", "awful", "boring", "poor", "dull")
FILLER = ("the", "film", "movie", "plot", "acting", "was", "is", "a", "story", "and", "this", "really", "quite",
          "cast", "ending")
VOCAB = ("<pad>", "not", *POSITIVE, *NEGATIVE, *FILLER)
MAX_LEN = 12
GROUP_TEXT = {"TP": "positive, called positive", "TN": "negative, called negative",
              "FP": "negative, called positive", "FN": "positive, called negative"}


def _sentence(rng) -> tuple[list[str], int]:
    """One sentence and its summed sentiment (never 0)."""
    while True:
        length = int(rng.integers(5, MAX_LEN + 1))
        phrases, score = [], 0
        for _ in range(int(rng.integers(1, 3))):
            sign = 1 if rng.random() < 0.5 else -1
            word = str(rng.choice(POSITIVE if sign > 0 else NEGATIVE))
            if rng.random() < 0.3:
                phrases.append(["not", word])
                sign = -sign
            else:
                phrases.append([word])
            score += sign
        fillers = length - sum(len(p) for p in phrases)
        if score == 0 or fillers < 0:
            continue
        blocks = phrases + [[str(w)] for w in rng.choice(FILLER, size=fillers)]
        return [w for i in rng.permutation(len(blocks)) for w in blocks[i]], score


def load(seed: int, n_train: int = 1200, n_test: int = 300) -> dict:
    """Sentences as padded ids (n, MAX_LEN), masks and labels; 5% of the labels flipped."""
    rng = np.random.default_rng(seed)
    words, labels = [], []
    for _ in range(n_train + n_test):
        sentence, score = _sentence(rng)
        words.append(sentence)
        labels.append(int(score > 0) ^ int(rng.random() < 0.05))
    index = {w: i for i, w in enumerate(VOCAB)}
    ids = np.zeros((len(words), MAX_LEN), dtype=np.int64)
    for r, sentence in enumerate(words):
        ids[r, : len(sentence)] = [index[w] for w in sentence]
    mask = (ids != 0).astype(np.int64)
    y = np.asarray(labels, dtype=np.int64)
    cut = n_train
    return {"ids_train": ids[:cut], "mask_train": mask[:cut], "y_train": y[:cut], "ids_test": ids[cut:],
            "mask_test": mask[cut:], "y_test": y[cut:], "words_test": words[cut:]}


def build(seed: int):
    """Embedding 16 + learned positions, one encoder layer (2 heads, GELU), masked mean pooling, 1 logit."""
    import torch

    torch.manual_seed(seed)

    class TextClassifier(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(len(VOCAB), 16)
            self.pos = torch.nn.Parameter(0.1 * torch.randn(MAX_LEN, 16))
            layer = torch.nn.TransformerEncoderLayer(16, nhead=2, dim_feedforward=32, dropout=0.1, activation="gelu",
                                                     batch_first=True)
            self.enc = torch.nn.TransformerEncoder(layer, num_layers=1, enable_nested_tensor=False)
            self.out = torch.nn.Linear(16, 1)

        def forward(self, ids, mask):
            h = self.enc(self.emb(ids) + self.pos, src_key_padding_mask=mask == 0)
            m = mask[..., None].to(h.dtype)
            return self.out((h * m).sum(dim=1) / m.sum(dim=1))

    return TextClassifier()


def fit(model, d: dict, *, epochs: int, seed: int, progress: bool) -> list[float]:
    import torch
    from tqdm import tqdm

    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    ids, mask = torch.from_numpy(d["ids_train"]), torch.from_numpy(d["mask_train"])
    y = torch.from_numpy(d["y_train"].astype(np.float32))
    rng, losses = np.random.default_rng(seed), []
    model.train()
    for _ in tqdm(range(epochs), desc="training", disable=not progress):
        total = 0.0
        for batch in np.array_split(rng.permutation(len(y)), max(1, len(y) // 64)):
            at = torch.from_numpy(batch)
            opt.zero_grad()
            loss = loss_fn(model(ids[at], mask[at])[:, 0], y[at])
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(batch)
        losses.append(total / len(y))
    model.eval()
    return losses


def explain(model, d: dict, n: int, *, n_background: int, n_samples: int, seed: int) -> gradshap.Explanation:
    """Each test sentence against up to ``n_background`` training sentences of its length."""
    import torch

    lengths, train_lengths = d["mask_test"][:n].sum(axis=1), d["mask_train"].sum(axis=1)
    rng = np.random.default_rng(seed)
    background = np.sort(np.concatenate([
        rng.choice(pool, size=min(n_background, pool.size), replace=False)
        for pool in (np.flatnonzero(train_lengths == length) for length in np.unique(lengths))]))
    exp = gradshap.token_attributions(
        model, torch.from_numpy(d["ids_test"][:n]), layer="emb", attention_mask=torch.from_numpy(d["mask_test"][:n]),
        background=torch.from_numpy(d["ids_train"][background]),
        background_mask=torch.from_numpy(d["mask_train"][background]), same_length=True,
        n_samples=n_samples, seed=seed)
    return exp.to_numpy()


def word_table(exp: gradshap.Explanation, d: dict) -> list[tuple]:
    """(word, mean attribution, occurrences) for every word of the explained sentences, by mean."""
    values, ids, mask = np.asarray(exp.values), np.asarray(exp.data), d["mask_test"][: len(exp)] == 1
    rows = [(VOCAB[i], float(values[(ids == i) & mask].mean()), int(((ids == i) & mask).sum()))
            for i in range(1, len(VOCAB)) if ((ids == i) & mask).any()]
    return sorted(rows, key=lambda r: -r[1])


def run(args) -> int:
    if args.framework != "torch":
        print("gradshap demo: the text demo runs on PyTorch only; drop --framework or pass --framework torch",
              file=sys.stderr)
        return 2
    _common.needs("torch", not args.no_report)
    timer, progress = _common.Timer(), not args.no_progress
    with timer.stage("data"):
        d = load(args.seed)
    print("gradshap demo: text, framework torch")
    print(f"data: generated sentiment sentences, {len(VOCAB)} words, 5 to {MAX_LEN} words each (padded); "
          f"train {len(d['y_train'])}, test {len(d['y_test'])}; 5% of labels flipped")
    import torch

    with timer.stage("training"):
        model = build(args.seed)
        losses = fit(model, d, epochs=args.epochs, seed=args.seed, progress=progress)
        with torch.no_grad():
            logits = model(torch.from_numpy(d["ids_test"]), torch.from_numpy(d["mask_test"]))[:, 0].numpy()
    y_test, y_pred = d["y_test"], (logits > 0).astype(np.int64)
    accuracy = float((y_pred == y_test).mean())
    print(f"model: embedding 16, one transformer encoder layer (2 heads), masked mean pooling, 1 logit; Adam, "
          f"{args.epochs} epochs, final training loss {losses[-1]:.4f}")
    n = min(args.n_explain or len(y_test), len(y_test))
    with timer.stage("explanation"):
        exp = explain(model, d, n, n_background=args.background, n_samples=args.n_samples, seed=args.seed)
    labels = gradshap.confusion_labels(y_test[:n], y_pred[:n])
    counts = {g: int((labels == g).sum()) for g in CONFUSION}
    completeness = _common.delta_summary(exp)
    words = word_table(exp, d)
    print(f"test accuracy {accuracy:.3f} on {len(y_test)} sentences; explained {n}: "
          + "  ".join(f"{g} {counts[g]}" for g in CONFUSION))
    print(f"explanation: per token at the embedding output, against up to {args.background} training sentences "
          f"of the same length, {args.n_samples} samples per sentence, seed {args.seed}")
    print(f"completeness: worst |delta| = {completeness['max_abs_delta']:.3g}, mean |delta| = "
          f"{completeness['mean_abs_delta']:.3g} (spread of f(x) - E[f(b)]: "
          f"{completeness['spread_of_output_minus_base']:.3g})")
    print("mean attribution per word (logit units), most positive and most negative:")
    for word, mean, count in words[:5] + words[-5:]:
        print(f"    {word:<12}{mean:>+9.3f}   ({count} occurrences)")
    summary = {"demo": "text", "framework": "torch", "seed": args.seed, "epochs": args.epochs,
               "final_training_loss": losses[-1], "test_rows": len(y_test), "explained_rows": n,
               "accuracy": accuracy, "counts": counts, "background_rows": args.background,
               "n_samples": args.n_samples, "sampler": exp.sampler, **completeness,
               "words": [dict(zip(("word", "mean", "count"), w)) for w in words], "labels": labels.tolist()}

    def report():
        with timer.stage("report"):
            return _write_report(args, exp, d, labels, logits[:n], y_test, y_pred, summary)

    return _common.finish(args, timer, summary, report)


def _write_report(args, exp, d, labels, logits, y_test, y_pred, summary) -> Report:
    from gradshap import plots

    rep = Report(args.out, "gradshap demo: a tiny transformer explained per token (torch)")
    rep.text(
        "A one-layer transformer classifies generated sentences as positive or negative. "
        "<code>gradshap.token_attributions</code> explains its logit for <em>positive</em> at the output of the "
        "embedding layer, against training sentences of the same length, and sums each token's attributions "
        "over the embedding: every word gets one number, in logit units, and a sentence's numbers add up to "
        "f(x) − E[f(b)] up to the residual δ. Padding gets none.", raw=True)
    rep.table(None, _common.settings_rows(args, summary, "sentences"))
    rep.heading("Predictions", "predictions")
    cells = {(1, 1): "TP", (0, 0): "TN", (0, 1): "FP", (1, 0): "FN"}
    rep.figure(confusion_figure(y_test, y_pred, ["negative", "positive"], title="test set", cell_labels=cells),
               "confusion", "Confusion matrix on the test set (rows: truth, columns: prediction).")
    rep.heading("Sentences by group: TP, TN, FP, FN", "groups")
    rep.text("Red words push towards positive, blue towards negative; the stronger the colour, the larger the "
             "attribution (one scale for the whole page). Hover a word for its value. For each group, the "
             "sentences the model is most sure of.")
    scale = float(np.max(np.abs(exp.values))) if len(exp) else 1.0
    n = len(exp)
    for g in CONFUSION:
        rows = np.flatnonzero(labels == g)
        rep.heading(f"{g}: {GROUP_TEXT[g]} ({rows.size})")
        if rows.size == 0:
            rep.text("No sentence in this group.")
            continue
        sign = 1.0 if g in ("TP", "FP") else -1.0
        shown = rows[np.argsort(-sign * logits[rows], kind="stable")[:6]]
        tokens = [d["words_test"][r] for r in shown]
        names = [f"test sentence {r}" for r in shown]
        rep.html(plots.text_html(exp[shown], tokens, scale=scale, names=names))
        rep.figure(plots.text(exp[shown], tokens, scale=scale, width=72, names=names, title=f"{g}: {GROUP_TEXT[g]}"),
                   f"tokens_{g}", f"The same {len(shown)} sentences as a figure.")
    rep.heading("Words", "words")
    rep.text("Mean attribution of each word over its occurrences in the explained sentences.")
    rep.table(("word", "mean attribution", "occurrences"),
              [(w["word"], w["mean"], w["count"]) for w in summary["words"]])
    rep.heading("Completeness", "checks")
    rep.figure(plots.completeness(exp), "completeness",
               f"Each sentence's sum of attributions against f(x) − E[f(b)] (left) and the residuals δ (right), "
               f"for the {n} sentences explained.")
    rep.heading("Files", "files")
    exp.save(rep.folder / "explanation.npz")
    rep.link("explanation.npz", "explanation.npz: the Explanation (values per token; data: the token ids)")
    rep.link("summary.json", "summary.json: the numbers printed by the demo")
    rep.write()
    return rep
