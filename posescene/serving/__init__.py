"""Using a trained adapter: the registered MLflow pyfunc model (``pyfunc``, logged from code by ``pyfunc_model``)
and ``posescene generate`` as a library call (``generate_images``)."""
