"""How storestream changes the way Faust and aiokafka fetch, hand over, recover and produce."""
