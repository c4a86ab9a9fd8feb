"""The exceptions that mean "the user asked for something impossible" (shown as one line,
exit code 2 / HTTP 4xx), as opposed to bugs."""
from __future__ import annotations

from pydantic import ValidationError

from search.budgets import BudgetError
from search.formats import FormatError
from search.problem import InfeasibleError
from workers.data import DataError
from workers.sources import SourceError

USER_ERRORS: tuple[type[Exception], ...] = (BudgetError, FormatError, InfeasibleError, DataError, SourceError,
                                             ValidationError, ValueError)
