"""Models by name. Each entry has build(cfg, **task_info) and validate_config(cfg)."""
from regbench.models import bilstm, cnn13, popularity, two_tower

# mf is the two-tower module with no side features and no MLP (model/mf.yaml).
MODELS = {"cnn13": cnn13, "bilstm": bilstm, "two_tower": two_tower, "mf": two_tower, "popularity": popularity}
