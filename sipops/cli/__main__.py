from sipops.cli.main import run

run()
