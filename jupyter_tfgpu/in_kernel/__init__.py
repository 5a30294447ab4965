"""Code that runs inside kernels. Imports nothing from the server side of the package."""
