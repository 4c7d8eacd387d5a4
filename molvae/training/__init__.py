"""The parts of training behind :func:`molvae.train.train` (layer 3).

- ``inputs``: read, clean and split the molecules; standardize property targets;
- ``run_folder``: the run folder's files, lock, claim/clear, LATEST, history and curves;
- ``schedules``: β and learning-rate schedules, loss terms, mixed precision;
- ``state``: :class:`~molvae.training.state.TrainState`, the resumable state (``checkpoint.pt``'s
  ``training_state``);
- ``parallel``: each rank's batches and share of validation under torchrun;
- ``trainer``: :class:`~molvae.training.trainer.Trainer`, the loop (``train_epoch``, ``step``,
  ``validate``, ``end_epoch``, ``save``).
"""
