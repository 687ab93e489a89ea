"""Silence the banners third-party packages log when imported or constructed, and nothing else.

pymbar logs a caution about ``timeseries`` and a "JAX NOT FOUND" banner when imported (openmmtools'
package import loads it); openmmtools' multistate classes log "the API is experimental" when built.
Inside :func:`quiet_banners` exactly those messages are dropped, from exactly those loggers; every
other record passes, and nothing is changed outside the block.
"""

__all__ = ["quiet_banners"]

import contextlib
import logging

_BANNERS = {
    "pymbar.timeseries": "Warning on use of the timeseries module",
    "pymbar.mbar_solvers": "JAX NOT FOUND",
    "openmmtools.multistate.multistatereporter": "openmmtools.multistate API is experimental",
    "openmmtools.multistate.multistatesampler": "openmmtools.multistate API is experimental",
    "openmmtools.multistate.multistateanalyzer": "openmmtools.multistate API is experimental",
}


class _DropBanner(logging.Filter):
    def __init__(self, text):
        super().__init__()
        self.text = text

    def filter(self, record):
        return self.text not in record.getMessage()


@contextlib.contextmanager
def quiet_banners():
    """Drop the import/construction banners of pymbar and openmmtools.multistate inside the block.

    Examples
    --------
    >>> import logging
    >>> with quiet_banners():
    ...     logging.getLogger("pymbar.mbar_solvers").warning("JAX NOT FOUND")  # dropped
    >>> logging.getLogger("pymbar.mbar_solvers").filters
    []
    """
    installed = [(logging.getLogger(name), _DropBanner(text)) for name, text in _BANNERS.items()]
    for logger, banner in installed:
        logger.addFilter(banner)
    try:
        yield
    finally:
        for logger, banner in installed:
            logger.removeFilter(banner)
