"""Structure from motion with lift features, hloc style: each step is a module with a
``main()`` that returns the file it wrote (:mod:`.extract`, :mod:`.pairs`, :mod:`.match`,
:mod:`.verify` with :mod:`correspondence.refine`, :mod:`.reconstruct`); :func:`run` chains them (the ``lift-sfm`` command)."""
from .errors import SfMError
from .extract import EXTRACTORS, ExtractConf, register_extractor
from .match import MatchConf
from .pipeline import SfMConfig, SfMResult, run
from correspondence.refine import RefineConf
from .verify import VerifyConf

__all__ = ["EXTRACTORS", "ExtractConf", "MatchConf", "RefineConf", "SfMConfig", "SfMError", "SfMResult",
           "VerifyConf", "register_extractor", "run"]
