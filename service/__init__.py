"""The service layer: FastAPI app (api), store (db, store, migrations), dispatcher, SDK (client,
schemas) and the CLI. Importing this package imports nothing heavy."""
