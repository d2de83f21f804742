"""Tasks that plug into the training engine (weightformer.engine): each brings its data, model, loss and metrics.

Each task is declared once in `registry.py`; its recipes, command-line verbs and checkpoint loading derive from
that declaration:

    from weightformer.tasks import load_config, load_run_model
    cfg = load_config("detection", "synthetic", epochs=2)       # recipes: configs/detection/*.yaml
    run = load_run_model("runs/synthetic/checkpoints/best.pth")  # any task's checkpoint, EMA weights by default
    export_weights("runs/synthetic", "my-detector")                # safetensors + config.json + model card
    model = from_pretrained("my-detector")                          # no checkpoint, no data
"""

from .loader import RunModel, build_run_model, load_run_model
from .publish import export_weights, from_pretrained, load_pretrained
from .registry import (
    TaskSpec,
    add_config_arguments,
    config_from_args,
    get_task,
    list_recipes,
    load_config,
    register,
    tasks,
    unregister,
)

__all__ = ["TaskSpec", "register", "unregister", "tasks", "get_task", "load_config", "list_recipes",
           "add_config_arguments", "config_from_args", "RunModel", "load_run_model", "build_run_model",
           "export_weights", "load_pretrained", "from_pretrained"]
