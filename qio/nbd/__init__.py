"""The NBD protocol: wire format (``protocol``), a blocking client (``client``, used by the
``nbd`` block driver) and the ``qio-nbd`` server (``server``, ``connection``, ``export``)."""
