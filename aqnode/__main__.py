from aqnode.cli import main

main()
