"""The joint bit-width + pruning search (APQ, search/joint.py) as the registered solver "joint".

It takes solver_params (pruning ratios, structured pruning, the population search's and the
predictor's settings), searches formats × pruning ratios (its budgets are checked against that
space, whose cheapest policy prunes everywhere), and measures policies on the model itself
(``needs_table`` False): the measurements, the predictor and the pruning are torch
(proxies/joint.py), run by the pipeline (workers/joint.py) instead of :meth:`solve`."""
from __future__ import annotations

from typing import Any

from search.budgets import CostModel
from search.joint import DEFAULT_RATIOS, JointParams, JointSpace, PredictorParams, check_ratios
from search.layers import TieGroups
from search.params import joint_solver_params
from search.problem import Problem, Solution
from search.solvers.base import Solver


class JointSolver(Solver):
    """APQ: bits + pruning, predictor-guided."""
    name = "joint"
    takes_params = True
    needs_table = False

    def __init__(self, ratios=DEFAULT_RATIOS, structured: bool = False, params: JointParams | None = None,
                 predictor: PredictorParams | None = None):
        self.ratios, self.structured = check_ratios(ratios), bool(structured)
        self.params = params or JointParams()
        self.predictor = predictor or PredictorParams()

    @classmethod
    def from_params(cls, params: dict[str, Any], seed: int, ties: list) -> "JointSolver":
        (ratios, structured), search, predictor = joint_solver_params(params, seed, ties)
        return cls(ratios, structured, search, predictor)

    def check_quantizer(self, quantizer: str) -> None:
        if quantizer != "rtn":
            raise ValueError("joint: the joint search prunes and quantizes with RTN; GPTQ after pruning is not "
                             "supported yet — use quantizer rtn with the joint solver")

    def check_budgets(self, costs: CostModel, budgets: dict[str, float], ties: TieGroups | None = None) -> JointSpace:
        """Budgets against the formats × pruning ratios; returns that space (the search's)."""
        space = JointSpace(costs, self.ratios, self.structured)
        space.check_budgets(budgets)
        return space

    def _solve(self, problem: Problem) -> Solution:
        raise ValueError("joint: the joint search measures pruned and quantized policies on the model; it does not "
                         "solve a sensitivity table — run it as a search job (solver 'joint')")
