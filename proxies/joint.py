"""Joint bit-width + pruning search (APQ) on a real model: measurements, the MLP predictor with
transfer, and the search that returns the best *measured* of its top candidates.

1. Pretrain the predictor on cheap samples of the float/pruning-only space (every layer kept in
   float, random pruning ratios), measured on calibration data.
2. Transfer: fine-tune it on fewer measured quantized+pruned samples. Accuracy (Kendall τ and
   RMSE of log-loss) on held-out quantized+pruned samples is reported three ways: the pretrained
   predictor as is, a predictor trained from scratch on the fine-tuning samples only, and the
   transferred one — APQ's claim is that transfer wins with few quantized samples.
3. Evolve budget-feasible policies scored by the transferred predictor; measure the ``top_k``
   for real and return the best measured, with predicted and real numbers side by side."""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from proxies.base import swapped
from proxies.fisher import fisher_term
from proxies.pruning import channel_prune, magnitude_prune
from proxies.quant import quantize_module_weight
from search.evolved.ground_truth import rank_corr
from search.joint import JointParams, JointSpace, PredictorParams, predictor_guided_search, random_feasible


class JointWeights:
    """Pruned-then-quantized weights per (layer, option), cached (the search measures many
    policies that share layers' options)."""

    def __init__(self, modules: list[nn.Module], space: JointSpace):
        self.modules, self.space = modules, space
        self._cache: dict[tuple[int, int], torch.Tensor] = {}
        self._float = [m.weight.detach().clone() for m in modules]

    def get(self, i: int, j: int) -> torch.Tensor:
        if (i, j) not in self._cache:
            m, fmt, r = self.modules[i], self.space.format_of(j), self.space.ratio_of(j)
            pruned = channel_prune(m, self._float[i], r) if self.space.structured else magnitude_prune(self._float[i], r)
            with swapped([m], [pruned]):
                self._cache[(i, j)] = pruned if fmt.is_float else quantize_module_weight(m, fmt)
        return self._cache[(i, j)]

    def policy(self, choice: np.ndarray) -> list[torch.Tensor]:
        return [self.get(i, int(j)) for i, j in enumerate(choice)]


class Predictor(nn.Module):
    def __init__(self, n_in: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, 1))
        self.mu, self.sd = 0.0, 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1) * self.sd + self.mu


def _fit(model: Predictor, x: np.ndarray, y: np.ndarray, epochs: int, lr: float, seed: int, standardise: bool) -> None:
    torch.manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y.astype(np.float32))
    if standardise:
        model.mu, model.sd = float(yt.mean()), float(yt.std()) or 1.0
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-4)
    for _ in range(epochs):
        opt.zero_grad()
        loss = ((model(xt) - yt) ** 2).mean()
        loss.backward()
        opt.step()


def _predict(model: Predictor, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy().astype(np.float64)


def _accuracy(pred: np.ndarray, truth: np.ndarray) -> dict:
    tau, rho = rank_corr(pred, truth)
    return {"tau": tau, "spearman": rho, "rmse_log_loss": float(np.sqrt(np.mean((pred - truth) ** 2)))}


@dataclass
class JointResult:
    choice: np.ndarray
    predicted_loss: float
    measured_loss: float
    candidates: list[dict]
    predictor: dict
    samples_measured: int
    info: dict = field(default_factory=dict)


def fisher_prior(space: JointSpace, modules: list[nn.Module], fisher_diag: list[torch.Tensor]) -> np.ndarray:
    """L × options table Σ F·(W_option − W)²: the second-order loss estimate of every (format,
    pruning) option, pruning included — the predictor's prior feature."""
    w = JointWeights(modules, space)
    out = np.zeros((space.n_layers, space.n_options))
    with torch.no_grad():
        for i, (m, f) in enumerate(zip(modules, fisher_diag)):
            base = m.weight.detach().float()
            for j in range(space.n_options):
                out[i, j] = fisher_term(f, w.get(i, j), base)
    return out


def run_joint(space: JointSpace, modules: list[nn.Module], measure_loss: Callable[[], float],
              budgets: dict[str, float], search: JointParams, pred: PredictorParams,
              progress: Callable[[float, str], None] = lambda f, m: None,
              prior: np.ndarray | None = None) -> JointResult:
    """``measure_loss()`` returns the calibration loss of the model as it currently is; the
    policies are applied by swapping weights around it. ``prior`` (L × options, e.g.
    ``fisher_prior``) adds its additive prediction as a predictor feature."""
    search.check()
    pred.check()
    rng = np.random.default_rng(search.seed)
    weights = JointWeights(modules, space)
    R = len(space.ratios)
    float_k = next((k for k, f in enumerate(space.costs.formats) if f.is_float), None)
    count = [0]
    total = pred.pretrain_samples + pred.finetune_samples + pred.holdout_samples + search.top_k

    def measure(choice: np.ndarray) -> float:
        with swapped(modules, weights.policy(choice)):
            loss = measure_loss()
        count[0] += 1
        progress(0.9 * count[0] / total, f"measured {count[0]}/{total}")
        return loss

    # 1. float/pruning-only samples (float format column, random ratios); when the job's menu has
    #    no float format the pruning-only samples use the dearest format instead
    base_k = float_k if float_k is not None else int(np.argmax([f.bits for f in space.costs.formats]))
    pre = np.array([[space.option(base_k, int(rng.integers(R))) for _ in range(space.n_layers)]
                    for _ in range(pred.pretrain_samples)])
    y_pre = np.log(np.maximum([measure(c) for c in pre], 1e-12))
    # 2. quantized+pruned samples that meet the budgets: fine-tuning and held-out sets
    qp = random_feasible(space, budgets, pred.finetune_samples + pred.holdout_samples, rng)
    y_qp = np.log(np.maximum([measure(c) for c in qp], 1e-12))
    ft, ho = slice(0, pred.finetune_samples), slice(pred.finetune_samples, None)
    enc = lambda c: space.encode(c, prior)
    x_pre, x_qp = enc(pre), enc(qp)

    pretrained = Predictor(x_pre.shape[1], pred.hidden)
    _fit(pretrained, x_pre, y_pre, pred.epochs, pred.lr, search.seed, standardise=True)
    scratch = Predictor(x_pre.shape[1], pred.hidden)
    _fit(scratch, x_qp[ft], y_qp[ft], pred.epochs, pred.lr, search.seed, standardise=True)
    transferred = Predictor(x_pre.shape[1], pred.hidden)
    transferred.load_state_dict(pretrained.state_dict())
    transferred.mu, transferred.sd = pretrained.mu, pretrained.sd
    _fit(transferred, x_qp[ft], y_qp[ft], pred.finetune_epochs, pred.lr / 3, search.seed + 1, standardise=False)
    report = {name: _accuracy(_predict(m, x_qp[ho]), y_qp[ho])
              for name, m in (("pretrained_only", pretrained), ("scratch", scratch), ("transferred", transferred))}
    report["holdout_samples"] = int(len(y_qp[ho]))
    best_model = max((transferred, scratch), key=lambda m: _accuracy(_predict(m, x_qp[ho]), y_qp[ho])["tau"])
    report["used"] = "transferred" if best_model is transferred else "scratch"
    score_fn = lambda c: _predict(best_model, enc(c))
    if prior is not None:
        prior_log = lambda c: np.log(np.maximum(prior[np.arange(space.n_layers)[None, :], np.atleast_2d(c)].sum(axis=1), 1e-30))
        tau, rho = rank_corr(prior_log(qp[ho]), y_qp[ho])
        report["prior_only"] = {"tau": tau, "spearman": rho, "rmse_log_loss": None}
        if tau > report[report["used"]]["tau"]:
            # the prior alone ranks held-out samples better than any MLP: search with it, and
            # calibrate its scale to log-loss on the measured samples for the reported numbers
            a, b = np.polyfit(prior_log(qp), y_qp, 1)
            score_fn = lambda c: a * prior_log(c) + b
            report["used"] = "prior_only"
    progress(0.9, f"predictor τ held-out: transferred {report['transferred']['tau']:.3f}, "
                  f"scratch {report['scratch']['tau']:.3f}; using {report['used']}")

    # 3. predictor-guided evolution, then the top candidates measured for real
    top = predictor_guided_search(space, budgets, score_fn, search,
                                  lambda g, n, b: progress(0.9, f"evolution {g}/{n}: best predicted log-loss {b:.4f}"))
    cands = []
    for c in top:
        p = float(math.exp(score_fn(c[None, :])[0]))
        cands.append({"choice": c.tolist(), "predicted_loss": p, "measured_loss": measure(c), **space.cost(c)})
    # the measured samples that met the budgets are candidates too: never return worse than them
    i_best = int(np.argmin(y_qp))
    cands.append({"choice": qp[i_best].tolist(), "predicted_loss": float(math.exp(score_fn(qp[i_best:i_best + 1])[0])),
                  "measured_loss": float(math.exp(y_qp[i_best])), "from": "measured sample", **space.cost(qp[i_best])})
    best = min(cands, key=lambda d: d["measured_loss"])
    return JointResult(np.array(best["choice"]), best["predicted_loss"], best["measured_loss"], cands, report,
                       count[0], {"ratios": list(space.ratios), "prior": prior is not None})
