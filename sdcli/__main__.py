from sdcli.cli.app import main

main()
