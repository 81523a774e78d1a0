"""Data from specs: Fashion-MNIST, image folders, synthetic inputs."""
