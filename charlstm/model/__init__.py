"""The model: what each cell is (cells.py), its parameters in one flat buffer
(parameters.py), a chunk through the layers (network.py), split over the cores
(shards.py), dropout masks (dropout.py), bfloat16 products (mixed.py), checkpoints
(checkpoint.py) and other formats (export.py), and using a trained model: sampling
(sample.py) and bits per character (evaluate.py)."""
