"""Using a trained model: evaluate, predict, export, Grad-CAM."""
