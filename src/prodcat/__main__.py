from prodcat.cli import main

main()
