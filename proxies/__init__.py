"""Everything that reads a model's weights or activations in torch: layer discovery, the
fake quantizer, tasks, sensitivity proxies and policy evaluation. Never imports Ray, SQLAlchemy
or FastAPI (DESIGN §1)."""
