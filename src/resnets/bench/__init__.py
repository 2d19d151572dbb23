"""`resnets bench`: the speed of a model's step (`model.py`) and of the input pipeline into it (`data.py`)."""
