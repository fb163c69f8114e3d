from services.notifications.spec import SPEC
from shared.cli import service_main

if __name__ == "__main__":
    service_main(SPEC)
