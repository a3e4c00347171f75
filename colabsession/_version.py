__version__ = "0.1.0"

# Where colabsession is installed from: it is not on the package index.
INSTALL_URL = "git+https://github.com/colabsession/colabsession"
