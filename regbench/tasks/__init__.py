"""Tasks by name: each a Task subclass that owns its data, model wiring, loss and metrics."""
from regbench.tasks.cifar10 import Cifar10Task
from regbench.tasks.recommendation import MovieLensTask
from regbench.tasks.tagging import Conll2000Task, Conll2003Task, ConllTask

TASKS = {task.name: task for task in (Cifar10Task, Conll2003Task, Conll2000Task, ConllTask, MovieLensTask)}
