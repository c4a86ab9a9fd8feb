"""bitplan's allocation core: formats and exact costs, budgets, sensitivity tables, solvers,
policies. Pure numpy/scipy (and pydantic for the wire schema): no torch, no DB, no HTTP, so
the service, the CLI and a user's laptop can all import it cheaply."""
