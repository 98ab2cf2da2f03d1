"""The dataset registry: ``--dataset`` names, the only place they are looked up (``--sampling`` names are
``sampling.SAMPLINGS``).

Importing this module imports no torch (the command line reads it for ``--help``); a dataset's source is
imported when it is first used.

A dataset source (``videolab.data.clips.DatasetSource``) knows its class names, builds its splits, generates
itself if it is synthetic, and gives the texts an offline tokenizer is trained on. Its metadata says what the
data holds, so a model that needs something the data lacks is refused before anything is built:

* ``provides``: ``labels`` (classes), ``captions`` (a reference text per clip), ``hints`` (a text given to the
  model with the clip), ``prompts`` (a question per clip), ``audio`` (video files that may have sound); a task
  (``videolab.tasks.registry``) and a model kind (``build_model.MODEL_KINDS``) say what they need of these;
* ``fix``: what to do instead when the data lacks what a run needs (the error says it);
* ``mirror_classes``: its labels (or answers) tell left from right, so flips and random crops are off by
  default (``VLoader.clip_spec``).

Adding a dataset: a source class in a module of this folder, and one ``DATASETS.add`` line here.
"""
from __future__ import annotations

from videolab.core.registry import Registry

DATASETS = Registry("dataset", flag="dataset")
DATASETS.add("synthetic", "videolab.data.synthetic:SyntheticSource", provides=("labels", "captions", "hints"),
             mirror_classes=True, help="synthetic motion clips (.pt), generated if missing")
DATASETS.add("ucf101", "videolab.data.videos:UCF101Source", provides=("labels", "audio"),
             help="UCF101 with its official splits")
DATASETS.add("videofolder", "videolab.data.videos:VideoFolderSource", provides=("labels", "audio"),
             help="<data_root>/<class>/<video> files")
DATASETS.add("synthetic_av", "videolab.data.av_synthetic:AudioVisualSource", provides=("labels", "audio", "hints"),
             help="synthetic audio-visual .mp4 clips, generated if missing")
DATASETS.add("qa_json", "videolab.data.qa:QASource", provides=("captions", "prompts"), mirror_classes=True,
             fix="it holds question-answer records for a captioner: add --use_vlm True --captioning True (e.g. "
                 "with --language_model qwen2-vl)", help="video question-answer records <data_root>/{train,test}.json")
