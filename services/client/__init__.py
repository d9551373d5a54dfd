"""``cnclip jobs``: a command-line client of the control service's job API.

Torch-free and free of the services' own dependencies: a laptop that submits jobs to a GPU
server installs only the ``client`` extra (httpx, PyYAML) and ``shared``'s core."""
