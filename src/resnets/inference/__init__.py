"""Using a trained model: predict, evaluate, export, Grad-CAM, and the CPU inference path they share (`fold.py`)."""
