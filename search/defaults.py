"""The default recipe's refine settings, in a module with no imports, so the lean SDK
(httpx + pydantic, no numpy) and the CLI's --help can show them."""

DEFAULT_REFINE_EVALS = 300   # refine's candidate policies, judged by measured loss on samples held
                             # apart from the table's (a racing judge: most candidates cost one batch).
# samples of the calibration source that refine's judge reads by default, per task kind
JUDGE_SAMPLES = {"embedding": 256, "causal_lm": 16, "classifier": 256}
