"""``StopAfter(n)``: a Lightning callback that ends training after ``n`` epochs, as an interruption would
(the run's ``last.ckpt`` is kept and no ``done.json`` written), for the resume tests."""

from lightning.pytorch.callbacks import Callback


class StopAfter(Callback):
    def __init__(self, epochs: int = 1):
        self.epochs = epochs

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch + 1 >= self.epochs:
            trainer.should_stop = True
