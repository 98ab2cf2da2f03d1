"""The task registry: what a run can learn. Importing it imports no torch (the command line reads it).

Each task's metadata says how a run selects it and what it trains:

* ``flag``: the ``--task`` value that selects it (``train`` is shared by the supervised tasks; the model kind the
  flags describe says which of them it is);
* ``kind``: the model kind (``build_model.MODEL_KINDS``) the task trains, or None for the kind the model flags
  describe;
* ``needs``: what the data must provide (``data/registry.py`` ``provides``).

Adding a task: its class (``tasks/base.py`` ``Task``) in a module of this folder, and one ``TASKS.add`` line
here (or ``TASKS.add`` from your own code, as the tests' toy task does).
"""
from __future__ import annotations

from videolab.core.registry import Choices, Registry

TASKS = Registry("task")
TASKS.add("classification", "videolab.tasks.classification:ClassificationTask", flag="train", kind=None,
          needs=("labels",), help="supervised classification (classifiers, vision + language classifiers, composed "
                                  "models)")
TASKS.add("captioning", "videolab.tasks.captioning:CaptioningTask", flag="train", kind=None, needs=("captions",),
          help="captioning and video question answering (GPT-2 captioner, Qwen2-VL)")
TASKS.add("pretraining", "videolab.tasks.pretraining:PretrainingTask", flag="pretrain", kind="pretrainer", needs=(),
          help="self-supervised pretraining of a video backbone (labels ignored)")

TASK_FLAGS = Choices(TASKS, "flag", flag="task")  # the values --task takes
