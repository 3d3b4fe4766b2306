"""The needles of the text-channel benchmark (:mod:`bench.text_channels`): what is said and shown, and the queries.

Each needle is ``(exact, paraphrase, question)``: the exact words said or
shown, the same content in other words, and a question about it. All were
written before any transcript or OCR read was seen. Two splits with
different sentences and signs: **dev** (anything tuned in
:mod:`agent.channels.text_search` is tuned on it) and **test** (the headline,
never tuned on).

Spoken needles are read by espeak-ng in :data:`VOICES` x :data:`SPEEDS`
(needle ``i`` gets combination ``i mod 6``). On-screen needles are short
signs (capitals) and captions (a sentence on a band), drawn in
:data:`FONTS` x :data:`SIGN_SIZES` with :data:`MOTIONS`, some partly
occluded (the rule is in :func:`bench.text_channels.sign_style`).
"""

from __future__ import annotations

Needle = tuple[str, str, str]

VOICES = ("en-us", "en+m3", "en+f3")
"""espeak-ng voices: American English, and two variants (male 3, female 3) of the default English."""
SPEEDS = (140, 185)
"""espeak-ng words per minute."""
FONTS = ("DejaVuSans-Bold", "DejaVuSerif", "DejaVuSansMono")
"""Debian's fonts-dejavu-core, under /usr/share/fonts/truetype/dejavu/."""
SIGN_SIZES = (18, 26, 36)
"""Font sizes in pixels on the 398 x 224 picture."""
MOTIONS = ("still", "drift", "scroll")
"""Still; drifting right 6 px/s; scrolling across the picture at 40 px/s (bouncing at the edges)."""

SPOKEN_DEV: list[Needle] = [
    (
        "the truck is waiting at gate four",
        "a lorry is parked by the fourth gate",
        "where is the truck waiting",
    ),
    (
        "the north entrance will close at six tonight",
        "the northern door shuts this evening at six",
        "when does the north entrance close",
    ),
    (
        "please move the forklift out of bay two",
        "take the lift truck away from the second bay",
        "which bay should the forklift leave",
    ),
    (
        "the fire alarm test starts at noon",
        "at midday the smoke alarm will be checked",
        "when is the fire alarm test",
    ),
    (
        "visitors must sign in at the front desk",
        "guests have to register at reception",
        "where do visitors sign in",
    ),
    (
        "the delivery from Hamburg is two hours late",
        "the shipment from Germany is delayed by two hours",
        "how late is the Hamburg delivery",
    ),
    (
        "the coffee machine on level three is broken",
        "the espresso maker upstairs on the third floor does not work",
        "which coffee machine is broken",
    ),
    (
        "all drivers report to the dispatch office",
        "every driver should go to the dispatch room",
        "where should the drivers report",
    ),
    (
        "the red van is blocking the loading ramp",
        "a crimson minibus is in the way of the ramp",
        "what is blocking the loading ramp",
    ),
    (
        "the meeting has moved to room twelve",
        "the briefing now takes place in room number twelve",
        "where is the meeting now",
    ),
    (
        "the conveyor belt in hall B has stopped",
        "the belt line in the second hall is not running",
        "which conveyor belt has stopped",
    ),
    (
        "pallets must not be stacked above the yellow line",
        "do not pile the pallets higher than the yellow marking",
        "how high can pallets be stacked",
    ),
    (
        "the night shift starts one hour earlier today",
        "today the late crew begins an hour sooner",
        "when does the night shift start today",
    ),
    (
        "a package for Doctor Miller is at the gate",
        "there is a parcel for Dr Miller waiting at the entrance",
        "who is the package at the gate for",
    ),
    (
        "wear your helmet in the warehouse at all times",
        "hard hats are required everywhere inside the storage building",
        "what must you wear in the warehouse",
    ),
    (
        "the parking lot will be cleaned on Friday",
        "on Friday the car park gets swept",
        "when will the parking lot be cleaned",
    ),
    (
        "the printer in the main office is out of paper",
        "the head office printer has no more sheets",
        "what is wrong with the printer",
    ),
    (
        "the train to Berlin leaves from platform nine",
        "the Berlin service departs at the ninth platform",
        "which platform does the Berlin train leave from",
    ),
    (
        "please close the freezer door after use",
        "shut the cold store door when you are done",
        "what should you do after using the freezer",
    ),
    (
        "the inspector arrives tomorrow morning",
        "the auditor will be here early tomorrow",
        "when does the inspector arrive",
    ),
    (
        "the elevator near the canteen is out of order",
        "the lift beside the cafeteria is not working",
        "which elevator is out of order",
    ),
    (
        "container seven is leaking oil",
        "oil is dripping from the seventh container",
        "which container is leaking",
    ),
    (
        "the shuttle bus to the airport is full",
        "there are no seats left on the airport coach",
        "is there room on the airport shuttle",
    ),
    (
        "lunch will be served in the courtyard",
        "the midday meal is outside in the yard",
        "where will lunch be served",
    ),
]

SPOKEN_TEST: list[Needle] = [
    (
        "the crane operator needs a break at three",
        "at three the person driving the crane should rest",
        "when does the crane operator need a break",
    ),
    (
        "the south gate is closed for repairs",
        "the southern entrance is shut while it is being fixed",
        "why is the south gate closed",
    ),
    (
        "the cold room temperature is too high",
        "the refrigerated store is getting too warm",
        "what is wrong with the cold room",
    ),
    (
        "the ferry to Dover is delayed by forty minutes",
        "the boat to Dover will leave forty minutes late",
        "how late is the Dover ferry",
    ),
    (
        "please bring the ladder to aisle fifteen",
        "carry the steps over to the fifteenth aisle",
        "where should the ladder go",
    ),
    (
        "the water pipe in the basement has burst",
        "a pipe broke downstairs and water is leaking",
        "what happened in the basement",
    ),
    (
        "the new badges are ready at security",
        "you can collect your fresh ID cards from the guards",
        "where are the new badges",
    ),
    (
        "the tractor is parked behind the barn",
        "the farm vehicle stands at the back of the shed",
        "where is the tractor parked",
    ),
    (
        "the customer in Lisbon cancelled the order",
        "the client from Portugal called off the purchase",
        "who cancelled the order",
    ),
    (
        "the safety training is on Wednesday afternoon",
        "the health and safety course takes place midweek after lunch",
        "when is the safety training",
    ),
    (
        "the blue container goes to dock eleven",
        "send the navy box to the eleventh dock",
        "where does the blue container go",
    ),
    (
        "the generator needs more diesel",
        "the power unit is running low on fuel",
        "what does the generator need",
    ),
    (
        "the library closes early on Sunday",
        "on Sunday the reading room shuts sooner than usual",
        "when does the library close early",
    ),
    (
        "the fence near the river is damaged",
        "the barrier by the stream is broken",
        "which fence is damaged",
    ),
    (
        "the courier from Madrid has arrived",
        "the messenger from Spain is here",
        "who has arrived",
    ),
    (
        "the kitchen sink on the second floor is blocked",
        "the basin in the upstairs kitchen is clogged",
        "which sink is blocked",
    ),
    (
        "the bus to the stadium leaves every ten minutes",
        "a coach to the arena departs six times an hour",
        "how often does the stadium bus leave",
    ),
    (
        "the password for the guest network has changed",
        "the visitor wifi has a new login code",
        "what changed on the guest network",
    ),
    (
        "the tomatoes in greenhouse four need water",
        "the plants in the fourth glasshouse are thirsty",
        "what needs water in greenhouse four",
    ),
    (
        "the radio in the control room is not working",
        "the walkie talkie set in the operations room is broken",
        "what is broken in the control room",
    ),
    (
        "the boxes of glass must be handled carefully",
        "be gentle with the crates of fragile glassware",
        "how should the glass boxes be handled",
    ),
    (
        "the dentist appointment is at half past nine",
        "you see the dentist at nine thirty",
        "what time is the dentist appointment",
    ),
    (
        "the heating in the gym is switched off",
        "the sports hall has no heating running",
        "is the heating on in the gym",
    ),
    (
        "the pilot is waiting in the crew lounge",
        "the captain is sitting in the staff lounge",
        "where is the pilot waiting",
    ),
]

SIGNS_DEV: list[Needle] = [
    ("ERROR 503", "server error code five hundred and three", "which error was shown"),
    ("NORTH ENTRANCE", "the northern way in", "where is the north entrance"),
    ("GATE 7 CLOSED", "the seventh gate is shut", "is gate seven open"),
    ("PLATFORM 12", "track number twelve", "which platform"),
    ("EXIT ONLY", "this way out, no entry", "can you enter here"),
    ("LOADING DOCK B", "the second loading bay", "where is loading dock B"),
    ("Next stop: Central Station", "the train is about to reach the main station", "what is the next stop"),
    ("Meeting postponed until Monday", "the meeting has been put off to Monday", "when is the meeting now"),
    ("WET FLOOR", "slippery ground, the floor is damp", "why be careful on the floor"),
    (
        "Flight BA 245 boarding at gate 9",
        "the BA 245 plane is boarding at the ninth gate",
        "where is BA 245 boarding",
    ),
    ("NO PARKING", "you may not leave your car here", "can I park here"),
    ("Temperature warning in zone 3", "zone three is too hot", "where is the temperature warning"),
]

SIGNS_TEST: list[Needle] = [
    ("FIRE EXIT", "emergency way out", "where is the emergency exit"),
    ("SYSTEM OFFLINE", "the computers are down", "is the system running"),
    ("STAFF ONLY", "employees only beyond this point", "who may go in here"),
    ("BAY 14 FULL", "the fourteenth bay has no room left", "is bay fourteen full"),
    ("CAUTION FORKLIFTS", "watch out for lift trucks", "what should you watch out for"),
    ("DOOR 21", "entrance number twenty one", "which door"),
    ("RECEPTION", "the front desk", "where is the front desk"),
    ("TRACK 4 DELAYED", "the fourth track is running late", "which track is delayed"),
    ("HIGH VOLTAGE", "danger of electric shock", "what is the danger here"),
    ("OUT OF SERVICE", "this machine does not work", "is it working"),
    ("WAREHOUSE C", "storage building three", "which warehouse is this"),
    ("KEEP LEFT", "stay on the left side", "which side should you keep to"),
    (
        "Breaking news: storm warning for the coast",
        "a gale is expected by the sea",
        "what warning was issued",
    ),
    ("Welcome to the annual meeting", "greetings to the yearly assembly", "which meeting is this"),
    ("Route 66 closed after accident", "a crash shut route sixty six", "why is route 66 closed"),
    ("Press the green button to start", "push the green switch to begin", "how do you start it"),
    ("Last train departs at 23:40", "the final train leaves at twenty to midnight", "when is the last train"),
    ("Match postponed due to rain", "the game was delayed by bad weather", "why was the match postponed"),
    ("Battery low, please charge", "the battery is nearly empty", "what is wrong with the battery"),
    (
        "Speaker: Anna Schmidt, chief engineer",
        "the chief engineer Anna Schmidt is talking",
        "who is speaking",
    ),
    ("Sale ends Sunday", "the discount finishes at the weekend", "when does the sale end"),
    ("Check in at counter 5", "register at the fifth desk", "where do I check in"),
    ("Lane 2 closed for roadworks", "the second lane is shut for construction", "which lane is closed"),
    ("Score: Lions 3, Tigers 1", "the Lions beat the Tigers three to one", "what is the score"),
]
