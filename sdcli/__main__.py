from sdcli.cli import main

main()
