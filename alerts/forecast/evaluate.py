"""How good a hot-spot forecast is: PAI, PEI and the predictive log-likelihood, per method.

For each forecast period (a day) the top-ranked cells covering a share ``a / A`` of the monitored area
are the "hot spots":

* **PAI** (predictive accuracy index, Chainey et al. 2008): hit rate over area share,
  ``(n / N) / (a / A)``: how much better than spreading the same patrol evenly.
* **PEI** (predictive efficiency index, Hunt 2016; both used by the NIJ Real-Time Crime Forecasting
  Challenge, 2017): ``n / n*``, the events caught over the most any choice of the same area could catch.
* **Log-likelihood**: ``sum log Poisson(y[c, d]; forecast[c, d])`` over every cell and day. PAI/PEI only
  judge the ranking at one coverage; the log-likelihood judges the whole forecast, including "how many".

Totals are pooled over the test days (``sum n / sum N``), so quiet days weigh less than busy ones.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import numpy.typing as npt
from scipy.special import gammaln

F64 = npt.NDArray[np.float64]


def poisson_loglik(forecast: F64, actual: F64) -> float:
    lam = np.maximum(np.asarray(forecast, dtype=np.float64), 1e-12)
    y = np.asarray(actual, dtype=np.float64)
    return float((y * np.log(lam) - lam - gammaln(y + 1)).sum())


def hotspot_mask(score: F64, area: F64, coverage: float) -> npt.NDArray[np.bool_]:
    """The highest-scoring cells, in order, until their area reaches ``coverage`` of the total (>= 1 cell)."""
    order = np.argsort(-score, kind="stable")
    cum = np.cumsum(area[order])
    k = max(1, int(np.searchsorted(cum, coverage * cum[-1], side="right")))
    mask = np.zeros(len(score), dtype=bool)
    mask[order[:k]] = True
    return mask


def _best_possible(actual: F64, area: F64, area_budget: float) -> float:
    order = np.argsort(-(actual / area), kind="stable")
    cum = np.cumsum(area[order])
    k = int(np.searchsorted(cum, area_budget * (1 + 1e-9), side="right"))
    return float(actual[order[:k]].sum())


@dataclass(frozen=True)
class HotspotScore:
    coverage: float
    pai: float
    pei: float
    hit_rate: float


@dataclass(frozen=True)
class MethodScore:
    method: str
    loglik: float
    loglik_per_event: float
    hotspots: tuple[HotspotScore, ...]

    def at(self, coverage: float) -> HotspotScore:
        return next(h for h in self.hotspots if abs(h.coverage - coverage) < 1e-12)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def score_method(
    method: str, forecast: F64, actual: F64, area: F64, coverages: tuple[float, ...] = (0.01, 0.05, 0.10)
) -> MethodScore:
    """Score daily forecasts ``(days, cells)`` against the counts that happened."""
    total = float(actual.sum())
    out = []
    for cov in coverages:
        n = n_star = 0.0
        area_share = 0.0
        for f, y in zip(forecast, actual, strict=True):
            mask = hotspot_mask(f, area, cov)
            n += float(y[mask].sum())
            budget = float(area[mask].sum())
            area_share += budget / float(area.sum())
            n_star += _best_possible(y, area, budget)
        a_share = area_share / max(len(forecast), 1)
        hit = n / total if total else 0.0
        out.append(
            HotspotScore(
                coverage=cov,
                pai=hit / a_share if a_share else 0.0,
                pei=n / n_star if n_star else 0.0,
                hit_rate=hit,
            )
        )
    ll = poisson_loglik(forecast, actual)
    return MethodScore(method, ll, ll / total if total else 0.0, tuple(out))


def format_table(scores: list[MethodScore]) -> str:
    """A plain-text table, one row per method."""
    covs = [h.coverage for h in scores[0].hotspots] if scores else []
    head = f"{'method':<10} {'loglik/event':>12}" + "".join(
        f" {'PAI@' + format(c, '.0%'):>9} {'PEI@' + format(c, '.0%'):>9}" for c in covs
    )
    rows = [head]
    for s in scores:
        cells = "".join(f" {h.pai:9.2f} {h.pei:9.3f}" for h in s.hotspots)
        rows.append(f"{s.method:<10} {s.loglik_per_event:12.4f}{cells}")
    return "\n".join(rows)
