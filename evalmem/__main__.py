from evalmem.cli import main

main()
