"""The defaults a job falls back on (recipe, refine settings, format menu, phases), each defined
once, in a module with no imports, so the lean SDK (httpx + pydantic, no numpy) and the CLI's
--help can show them."""

DEFAULT_REFINE_EVALS = 300   # refine's candidate policies, judged by measured loss on samples held
                             # apart from the table's (a racing judge: most candidates cost one batch).
DEFAULT_REFINE_PATIENCE = 100  # and it stops once this many candidates in a row since the last accepted move
                               # lost, or as many as it took to find that move when more (search/refine.py).
                               # Moves go best-predicted and never-judged first; on MiniLM (8 refines: menus
                               # g64 and g32/64/128 × 4 budgets, bench/quality.py's data) every accepted move
                               # came within that wait of the one before (the longest: 141 candidates after one
                               # found at candidate 156), while make run's job, whose last move is found at
                               # candidate 67, stops at 167 instead of 217
DEFAULT_REFINE_SECONDS = 600  # and at most this much wall time: a model whose forward is costly (a CNN
                              # at 224 px) judges few candidates per minute, and refine's gain comes
                              # mostly from its first accepted moves; the default MiniLM job stays
                              # far inside it (it stops on evaluations), so its answer is unchanged
# the devices a job may name (where its forward passes run), as a pattern every layer checks
DEVICE_PATTERN = r"^(auto|cpu|mps|cuda(:\d{1,2})?)$"
# The recipe by model kind, for jobs that name no proxy and no solver: (proxy, refine method).
# Causal LMs: a whole-model measured table is hours on a CPU (every cell re-runs the blocks after
# it over every calibration token), while the Fisher table of all 210 SmolLM2 layers takes 18 s;
# the operating-point loop then measures only the cells the solver needs, at the policy it is
# about to return (search/local.py). Other kinds keep measured + one-step moves.
RECIPES = {"causal_lm": ("fisher", "loop")}
DEFAULT_RECIPE = ("measured", "moves")
# refine's wall time by model kind when the job gives none. A causal LM's loop is time-bound
# (every measured cell re-runs the blocks after its layer over 2k tokens), its gain comes mostly
# in the first rounds, and at this limit a two-budget job on whole SmolLM2 stays within 20
# minutes on 2 cores (bench/speed.py)
REFINE_SECONDS = {"causal_lm": 420}
# samples of the calibration source that refine's judge reads by default, per task kind
JUDGE_SAMPLES = {"embedding": 256, "causal_lm": 16, "classifier": 256, "text_classifier": 128}
# samples of the calibration source that GPTQ's Hessians read by default, per task kind
HESSIAN_SAMPLES = {"embedding": 256, "causal_lm": 32, "classifier": 512, "text_classifier": 256}
# The format menu of a job that names none (DESIGN §2): every bit-width at each group size.
# Finer cost steps let the knapsack trade scale overhead against bits layer by layer; the
# uniform baselines use the reference group size (the g64 format of each bit-width).
DEFAULT_BITS = (2, 3, 4, 8)
DEFAULT_GROUP_SIZES = (32, 64, 128)
REFERENCE_GROUP = 64
# a job's phases, in order (DESIGN §8): the pipeline runs them, the server reports them
PHASES = ("load", "calibrate", "sensitivity", "solve", "evaluate", "refine")
