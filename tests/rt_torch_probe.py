"""Ray-side probes for tests/ray/test_ray_data_slots.py: a module that imports nothing heavy, so a
worker process that loads it to run them shows only what unpickling their argument imported."""
import sys


def torch_loaded_after_unpickling(argument) -> bool:  # `argument` arrives unpickled
    return "torch" in sys.modules


class TorchProbe:
    def loaded_after_unpickling(self, argument) -> bool:
        return torch_loaded_after_unpickling(argument)
