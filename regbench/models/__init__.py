"""Models by name. Each entry has build(cfg, **task_info) and validate_config(cfg)."""
from regbench.models import bilstm, cnn13

MODELS = {"cnn13": cnn13, "bilstm": bilstm}
