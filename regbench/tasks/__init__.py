"""Tasks by name: each a Task subclass that owns its data, model wiring, loss and metrics."""
from regbench.tasks.cifar10 import Cifar10Task

TASKS = {Cifar10Task.name: Cifar10Task}
