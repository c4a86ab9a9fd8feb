"""The service layer: CLI now; FastAPI app, store, SDK and dashboard come next."""
